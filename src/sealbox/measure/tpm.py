"""TPM 2.0 PCR 4, 9 and 11 (SHA-256 bank) for booting a sealbox UKI directly from UEFI firmware.

Assumptions (each one is checked against a real event log by tests/integration/measure):
- edk2/OVMF firmware with Secure Boot off and no boot loader in between (no sd-boot, no shim);
- systemd-stub 252 (Debian 12) and a Linux kernel whose EFI stub measures LoadOptions and the
  initrd into PCR 9 (Linux >= 6.1 does, Debian 12's 6.1 kernel included);
- no credentials, sysext images or add-ons next to the UKI (they would be extended into PCR 12/13
  and appended to the initrd), and no command line passed by the boot loader/VMM (-append), which
  would replace .cmdline and be measured into PCR 12.

Two firmware paths produce different PCR 4 orders; both are verified in tests:
- "boot-option": the UKI is a firmware boot option (e.g. \\EFI\\BOOT\\BOOTX64.EFI on an ESP, as on
  cloud vTPMs). BDS signals ReadyToBoot first, so PCR 4 = EV_EFI_ACTION "Calling EFI Application
  from Boot Option", EV_SEPARATOR, the UKI, then the kernel the stub loads with LoadImage. This is
  the order flashbots' measured-boot predicts, and what registers.PCR4 holds.
- "qemu-direct-kernel": QEMU `-kernel uki.efi` with OVMF. OVMF loads (and so measures) the UKI before
  it signals ReadyToBoot: PCR 4 = UKI, EV_EFI_ACTION, EV_SEPARATOR, kernel.
"""

from __future__ import annotations

from sealbox.formats.authenticode import authenticode
from sealbox.formats.ukiinfo import UkiInfo
from sealbox.measure.events import CALLING_EFI_APPLICATION, SEPARATOR_DATA, Register

BANK = "sha256"
BOOT_OPTION = "boot-option"
QEMU_DIRECT = "qemu-direct-kernel"
SCENARIOS = (BOOT_OPTION, QEMU_DIRECT)


def pe_load_events(info: UkiInfo, bank: str) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """The two EV_EFI_BOOT_SERVICES_APPLICATION events: the UKI, then the embedded kernel."""
    uki = ("EV_EFI_BOOT_SERVICES_APPLICATION", "UKI image loaded by the firmware (Authenticode)",
           authenticode(info.data, bank, what="UKI"))
    # systemd-stub 252 linux.c starts the kernel with LoadImage() from memory; with Secure Boot off its
    # security override is not installed, so the firmware's measure-boot hook hashes the kernel PE.
    kernel = ("EV_EFI_BOOT_SERVICES_APPLICATION", "Linux kernel from .linux, loaded by systemd-stub (Authenticode)",
              authenticode(info.kernel, bank, what="UKI .linux section"))
    return uki, kernel


def predict_pcr4(info: UkiInfo, scenario: str = BOOT_OPTION) -> Register:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown PCR 4 scenario {scenario!r}")
    reg = Register("PCR4", BANK, scenario)
    uki, kernel = pe_load_events(info, BANK)
    if scenario == QEMU_DIRECT:
        reg.add(*uki)
    reg.add_data("EV_EFI_ACTION", CALLING_EFI_APPLICATION.decode(), CALLING_EFI_APPLICATION)
    reg.add_data("EV_SEPARATOR", "separator (00000000) between pre-boot and OS-present", SEPARATOR_DATA)
    if scenario == BOOT_OPTION:
        reg.add(*uki)
    reg.add(*kernel)
    return reg


def kernel_stub_events(reg: Register, info: UkiInfo) -> None:
    """What the Linux EFI stub extends into PCR 9 (RTMR 2 under TDX): LoadOptions, then the initrd."""
    options = info.load_options()
    if options is not None:
        reg.add_data(
            "EV_EVENT_TAG",
            "Linux EFI stub: LOADED_IMAGE::LoadOptions (.cmdline as UCS-2 with NUL)",
            options,
        )
    else:
        reg.notes.append("the UKI has no .cmdline: no LoadOptions event")
    initrd = info.initrd
    if initrd is not None:
        reg.add_data("EV_EVENT_TAG", "Linux EFI stub: Linux initrd (.initrd content)", initrd)
    else:
        reg.notes.append("the UKI has no .initrd: no initrd event")


def predict_pcr9(info: UkiInfo) -> Register:
    reg = Register("PCR9", BANK, "any")
    kernel_stub_events(reg, info)
    return reg


def predict_pcr11(info: UkiInfo) -> Register:
    reg = Register("PCR11", BANK, "any")
    for name, content in info.measured_sections():
        reg.add_data("EV_IPL", f"systemd-stub 252: section name {name} (with NUL)", name.encode() + b"\0")
        reg.add_data("EV_IPL", f"systemd-stub 252: section {name} content ({len(content)} bytes)", content)
    return reg


def predict_pcrs(info: UkiInfo) -> dict[str, Register]:
    return {"PCR4": predict_pcr4(info, BOOT_OPTION), "PCR9": predict_pcr9(info), "PCR11": predict_pcr11(info)}
