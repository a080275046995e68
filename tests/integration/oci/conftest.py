import sys
from pathlib import Path

# Make oci_podman.py importable without turning tests into packages.
sys.path.insert(0, str(Path(__file__).parent))
