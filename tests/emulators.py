"""Local stand-ins for Cloud Storage and S3, for the storage tests: gcp-storage-emulator and moto's server.

The Cloud Storage emulator ignores generation preconditions (it has no code for them), while real Cloud Storage
answers a conditional upload of an existing object with HTTP 412, which is what berta-jax's lock and claims rely
on. `install_preconditions` teaches the emulator that behaviour; it serves one request at a time, so the check is
race-free. It also adds the cancel call of a resumable upload, which gcsfs uses to abandon a failed write.
"""
from __future__ import annotations

import os
import types
from http import HTTPStatus

_INSTALLED = False
_COND = ("ifGenerationMatch", "ifGenerationNotMatch",
         "ifMetagenerationMatch", "ifMetagenerationNotMatch")


def _target(request, storage, handler_name):
    """(bucket, object_name) the request will act on, or None."""
    from gcp_storage_emulator.exceptions import NotFound

    q = request.query
    bucket = request.params.get("bucket_name")
    if "upload_id" in q:  # resumable chunk (PUT, or POST workaround)
        try:
            obj = storage.get_resumable_file_obj(q["upload_id"][0])
        except NotFound:
            return None
        return obj["bucket"], obj["name"]
    if "name" in q:
        return bucket, q["name"][0]
    if handler_name == "insert":  # multipart / resumable: name in JSON metadata
        data = request.data  # cached on the Request, handler can re-read it
        if isinstance(data, dict):
            meta = data.get("meta", data)
            if isinstance(meta, dict) and meta.get("name"):
                return bucket, meta["name"]
        return None
    if request.params.get("object_id"):
        return bucket, request.params["object_id"]
    return None


def _check(request, storage, handler_name) -> bool:
    from gcp_storage_emulator.exceptions import NotFound

    q = request.query
    if not any(k in q for k in _COND):
        return True
    tgt = _target(request, storage, handler_name)
    if tgt is None:
        return True
    try:
        obj = storage.get_file_obj(*tgt)
        gen, meta = str(obj.get("generation")), str(obj.get("metageneration"))
    except NotFound:
        gen, meta = "0", None
    ok = True
    if "ifGenerationMatch" in q:
        ok &= gen == q["ifGenerationMatch"][0]
    if "ifGenerationNotMatch" in q:
        ok &= gen != q["ifGenerationNotMatch"][0]
    if "ifMetagenerationMatch" in q:
        ok &= meta == q["ifMetagenerationMatch"][0]
    if "ifMetagenerationNotMatch" in q:
        ok &= meta != q["ifMetagenerationNotMatch"][0]
    return ok


def _wrap(fn):
    name = fn.__name__

    def wrapped(request, response, storage, *a, **kw):
        if not _check(request, storage, name):
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {
                "code": 412,
                "message": "At least one of the pre-conditions you specified did not hold.",
                "errors": [{"reason": "conditionNotMet", "domain": "global",
                            "message": "At least one of the pre-conditions you specified did not hold."}],
            }})
            return None
        return fn(request, response, storage, *a, **kw)

    wrapped.__name__ = name
    wrapped._precondition_wrapped = True
    return wrapped


class _Status:  # Response.close() needs .value/.phrase; HTTPStatus has no 499
    value, phrase = 499, "Client Closed Request"


def _cancel_resumable(request, response, storage, *a, **kw):
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.storage import RESUMABLE_DIR

    upload_id = (request.query.get("upload_id") or [None])[0]
    try:
        storage.delete_resumable_file_obj(upload_id)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    try:
        storage._delete_file(RESUMABLE_DIR, storage.safe_id(upload_id))
    except Exception:
        pass
    response.status = _Status


def install() -> None:
    """Patch the emulator's handlers (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    targets = {objects.insert, objects.upload_partial, objects.get,
               objects.patch, objects.delete, objects.xml_upload}
    new = []
    for regex, handlers in server.HANDLERS:
        hs = {m: (_wrap(f) if f in targets else f) for m, f in handlers.items()}
        if hs.get("PUT") is not None and getattr(hs["PUT"], "__name__", "") == "upload_partial":
            hs["DELETE"] = _cancel_resumable
        new.append((regex, hs))
    server.HANDLERS = tuple(new)
    # Router.handle also falls back to ``objects.insert`` (module attribute
    # lookup) for POST .../o uploads that match no route: point it at a copy.
    ns = {k: getattr(objects, k) for k in dir(objects) if not k.startswith("__")}
    ns["insert"] = _wrap(objects.insert)
    server.objects = types.SimpleNamespace(**ns)
    _quiet_disconnects(server)
    _INSTALLED = True


def _quiet_disconnects(server_mod) -> None:
    """gcsfs cancels in-flight requests (e.g. _info races object GET vs listing,
    the adaptive read prefetcher cancels on close); the emulator then prints a
    BrokenPipeError traceback per request. Silence just those. Keeps the
    single-threaded HTTPServer (the emulator's storage is not thread-safe)."""
    import http.server as stdlib_server

    class _HTTPServer(stdlib_server.HTTPServer):
        def handle_error(self, request, client_address):
            import sys as _sys

            if isinstance(_sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                return
            super().handle_error(request, client_address)

    server_mod.server = types.SimpleNamespace(
        HTTPServer=_HTTPServer, BaseHTTPRequestHandler=stdlib_server.BaseHTTPRequestHandler)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gcs_emulator() -> tuple[str, object]:
    """(endpoint, server) of an in-memory Cloud Storage emulator in a thread of this process."""
    from gcp_storage_emulator.server import create_server

    install()
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server._api.daemon = True
    server.start()  # returns once the HTTP server is bound
    return f"http://127.0.0.1:{port}", server


def start_moto() -> tuple[str, object]:
    """(endpoint, server) of moto's S3 server in a thread of this process."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return f"http://127.0.0.1:{port}", server


def gcs_client_env(endpoint: str) -> dict[str, str]:
    """What points gcsfs at the emulator, for this process and its subprocesses: its endpoint (gcsfs honours
    STORAGE_EMULATOR_HOST), anonymous access (fsspec's FSSPEC_<protocol>_<option> configuration), and no gRPC
    bucket-type probe (an emulator cannot answer it; gcsfs would retry for 60 s per call)."""
    return {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def apply_client_env(env: dict[str, str]) -> None:
    """Set `env` here, and in fsspec's configuration, which it reads from the environment only at import."""
    import fsspec.config

    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)
