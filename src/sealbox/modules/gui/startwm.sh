#!/bin/sh
# sealbox gui: the session xrdp's session manager starts for the desktop user: XFCE (its own D-Bus session bus).
[ -r /etc/profile ] && . /etc/profile
[ -r "$HOME/.profile" ] && . "$HOME/.profile"
exec /usr/bin/startxfce4
