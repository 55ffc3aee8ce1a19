"""A GCS emulator for the tests (gcp-storage-emulator, a pure-Python server of GCS's JSON API, from PyPI), and the
environment that points every client of a run at it.

The clients: epath with `EPATH_USE_TF=0` reaches gs:// through fsspec's gcsfs, which honours
`STORAGE_EMULATOR_HOST`; Orbax writes arrays through TensorStore's gcs driver, which honours
`TENSORSTORE_GCS_HTTP_URL` (and takes `GOOGLE_AUTH_TOKEN_FOR_TESTING` instead of real credentials). TensorFlow's
own GCS client (epath's default backend when TensorFlow is installed) has its endpoint compiled in
(www.googleapis.com) and cannot be pointed at an emulator: these tests do not reach it.

Run as a script, this module is the emulator itself, with one departure from GCS mended (`_download`).
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
    cmd = [sys.executable, __file__, "start", "--port", str(port), "--in-memory", "-q"]
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


def _download(request, response, storage, *args, **kwargs):
    """The emulator's media download, plus the `x-goog-generation` and `x-goog-metageneration` headers that GCS
    sends with every object's bytes and the emulator leaves out.

    TensorStore's gcs driver takes an object's generation from that header when it reads the object's bytes, 0
    when the header is missing; it later revalidates its cached copy with `ifGenerationNotMatch=<generation>`
    and refuses generation 0 before sending anything ("Malformed StorageGeneration"; GCS generations are > 0).
    OCDBT revalidates its cached manifest when the cache entry is older than a later open asks for, so without
    the header a checkpoint save failed now and then, with the load of the machine
    (tests/test_storage.py::test_tensorstore_revalidates_what_it_read_on_gcs shows it with two reads)."""
    from gcp_storage_emulator.exceptions import NotFound

    _emulator_download(request, response, storage, *args, **kwargs)
    if response.status in (200, 206):
        with contextlib.suppress(NotFound):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]


if __name__ == "__main__":
    from gcp_storage_emulator.handlers import objects

    # Before the server module builds its routing table from the handlers.
    _emulator_download, objects.download = objects.download, _download
    from gcp_storage_emulator.__main__ import main

    main()
