"""A GCS emulator for the tests (gcp-storage-emulator, a pure-Python server of GCS's JSON API, from PyPI), and the
environment that points every client of a run at it.

The clients: epath with `EPATH_USE_TF=0` reaches gs:// through fsspec's gcsfs, which honours
`STORAGE_EMULATOR_HOST`; Orbax writes arrays through TensorStore's gcs driver, which honours
`TENSORSTORE_GCS_HTTP_URL` (and takes `GOOGLE_AUTH_TOKEN_FOR_TESTING` instead of real credentials). TensorFlow's
own GCS client (epath's default backend when TensorFlow is installed) has its endpoint compiled in
(www.googleapis.com) and cannot be pointed at an emulator: these tests do not reach it.
"""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

# gcsfs's default client first asks a bucket's type over gRPC, which this HTTP-only emulator cannot answer: the
# handshake then holds the emulator's one serving thread for a minute, stalling every client. Plain gcsfs asks
# nothing of the kind; set before gcsfs is imported (it reads the variable then), here and in every run.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
BUCKET = "sharpt-test"  # GCS bucket names have 3 characters or more (TensorStore checks).


def client_env(url: str) -> dict:
    """The environment variables that send a process's gs:// reads and writes to the emulator at `url`."""
    return {
        "EPATH_USE_TF": "0",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }


@contextlib.contextmanager
def running() -> Iterator[str]:
    """Starts the emulator (in memory, with bucket BUCKET) on a free port; yields its URL; stops it."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port), "--in-memory", "-q"]
    # Its log (a line per request) goes to a file: a pipe nobody reads would fill and stop the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([*cmd, "--default-bucket", BUCKET], stdout=log, stderr=log)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.seek(0) or log.read().decode()[-2000:]
                assert time.time() < deadline, "the GCS emulator did not answer within 60 s"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def reader(url: str):
    """gcsfs on the emulator, as an independent reader of what a run wrote (no listing cache between calls)."""
    from gcsfs.core import GCSFileSystem  # The plain client, whatever the variable was at import.

    return GCSFileSystem(endpoint_url=url, token="anon", project="test", skip_instance_cache=True)
