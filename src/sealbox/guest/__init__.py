"""The guest protocol in one place: what the image runs at boot and what the host reads back.

`files/` holds the scripts and units baked into every image (installed by builder.configure through
`guest.files`); `console` parses the markers those scripts print; `instance` encodes the per-instance
data the host hands the guest at run time. The magic strings they share live in `protocol`.
"""
