"""sealbox: build, measure, run and attest minimal reproducible Linux microVM images.

`import sealbox` stays light (the CLI starts from here): the SDK's names (sealbox.Sandbox, AsyncSandbox, Pool,
the exceptions) are loaded from sealbox.sdk on first use.
"""

__version__ = "0.1.0"
SDK_NAMES = frozenset({"Sandbox", "AsyncSandbox", "AsyncCommandHandle", "Pool", "CommandResult", "CommandHandle", "CommandFailed",
                       "CommandTimeout", "EntryInfo", "CreateOptions", "Host", "LocalHost", "SandboxInfo", "SealboxError",
                       "SandboxError", "NotFound", "SandboxTimeout", "ResourceExhausted", "UsageError"})


def __getattr__(name: str) -> object:
    if name in SDK_NAMES:
        # by name: only a user of the SDK gets here, so the builder's static import graph (its build key) rightly
        # does not include the SDK and the sandbox layer below it
        import importlib

        return getattr(importlib.import_module("sealbox.sdk"), name)
    raise AttributeError(f"module 'sealbox' has no attribute {name!r}")
