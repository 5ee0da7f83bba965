"""A minimal Docker Registry v2 on 127.0.0.1, enough for dockerd to pull one image.

dockerd treats 127.0.0.0/8 as an insecure (plain HTTP) registry, so a pull of
``127.0.0.1:<port>/<name>:<tag>`` comes here: /v2/, the manifest, the config
blob and one gzip layer holding a static busybox. Test-only; no internet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field

import trio

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def busybox_layer() -> bytes:
    """An uncompressed rootfs tar: /bin/busybox plus sh, true and echo links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "true", "echo", "cat"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


@dataclass
class Registry:
    name: str
    tag: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifest: bytes = b""
    requests: list[str] = field(default_factory=list)

    @classmethod
    def with_busybox(cls, name: str, tag: str) -> Registry:
        layer = busybox_layer()
        compressed = gzip.compress(layer, mtime=0)
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": len(config), "digest": _digest(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(compressed), "digest": _digest(compressed)}],
        }).encode()
        return cls(name, tag, {_digest(config): config, _digest(compressed): compressed}, manifest)

    def respond(self, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
        self.requests.append(f"{method} {path}")
        prefix = f"/v2/{self.name}/"
        if path == "/v2/":
            return "200 OK", {"Content-Type": "application/json"}, b"{}"
        if path in (prefix + f"manifests/{self.tag}", prefix + f"manifests/{_digest(self.manifest)}"):
            headers = {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": _digest(self.manifest)}
            return "200 OK", headers, self.manifest
        if path.startswith(prefix + "blobs/") and path[len(prefix) + 6:] in self.blobs:
            digest = path[len(prefix) + 6:]
            headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
            return "200 OK", headers, self.blobs[digest]
        return "404 Not Found", {"Content-Type": "application/json"}, b'{"errors":[{"code":"NOT_FOUND"}]}'

    async def handle(self, stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(65536)
            if not chunk or request + chunk[:1] == b"\x16":  # a TLS hello: refuse, dockerd falls back to HTTP
                await stream.aclose()
                return
            request += chunk
        method, path, _ = request.split(b"\r\n", 1)[0].decode().split(" ", 2)
        status, headers, body = self.respond(method, path.split("?", 1)[0])
        headers.update({"Content-Length": str(len(body)), "Connection": "close",
                        "Docker-Distribution-API-Version": "registry/2.0"})
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        await stream.send_all(head.encode() + (b"" if method == "HEAD" else body))
        await stream.aclose()
