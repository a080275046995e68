# Sourced by the scripts: `step TEXT` prints a heading, bold only on a terminal and never with NO_COLOR set
# (https://no-color.org), so a log of the output holds no escape codes.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  _bold=$(printf '\033[1m') _plain=$(printf '\033[0m')
else
  _bold='' _plain=''
fi
step() { printf '\n%s==> %s%s\n' "$_bold" "$*" "$_plain"; }
