"""The common test files of the installed transformers, from its source distribution, assembled into a package.

    python tests/transformers_common/fetch.py      # what the tests do on first use; prints the package's folder
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

STAND_INS = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "hf-vanilla-transformer"
FILES = ("test_modeling_common.py", "test_configuration_common.py")
PACKAGE = "transformers_common_tests"


def common_tests_root(version: str = transformers.__version__) -> Path:
    """A folder on whose path `transformers_common_tests` is the sdist's common tests of `version` with the
    stand-ins beside them; downloads the sdist the first time. Raises `RuntimeError` when that fails."""
    root = CACHE / f"transformers-{version}"
    package = root / PACKAGE
    if all((package / name).is_file() for name in FILES):
        return root
    with tempfile.TemporaryDirectory() as download:
        result = subprocess.run([sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary",
                                 ":all:", "--no-deps", "--quiet", "-d", download],
                                capture_output=True, text=True)
        archives = list(Path(download).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise RuntimeError(f"pip could not download the sdist of transformers=={version}: "
                               f"{result.stderr.strip()[-500:]}")
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE))
        shutil.copytree(STAND_INS, staging / PACKAGE,
                        ignore=shutil.ignore_patterns("fetch.py", "README.md", "__pycache__"))
        with tarfile.open(archives[0]) as archive:
            for name in FILES:
                member = archive.getmember(f"transformers-{version}/tests/{name}")
                (staging / PACKAGE / name).write_bytes(archive.extractfile(member).read())
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


if __name__ == "__main__":
    print(common_tests_root())
