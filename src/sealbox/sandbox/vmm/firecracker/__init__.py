"""Firecracker backend (API contract: Firecracker v1.16.1).

Modules: settings (binaries, env), schema (swagger -> JSON Schema validation), config (--config-file),
jailer (argv, jail layout, cgroups), staging (files into the jail), launch (start/stop), api (HTTP
client on the Unix socket), snapshot, doctor (host checks, --vmm auto), backend (VmmBackend).
"""
