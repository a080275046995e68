import sys
from pathlib import Path

# Make build_testlib importable without turning tests into packages.
sys.path.insert(0, str(Path(__file__).parent))
