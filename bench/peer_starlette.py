"""
A peer receiver on Starlette under uvicorn (its standard set-up: uvloop and
httptools), doing mxrecv's job (see L{peercommon}).

    python bench/peer_starlette.py --port 18412 --spool DIR [--cert C --key K]
"""

from __future__ import annotations

import argparse

import uvicorn
from peercommon import PeerSpool, handle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def makeApp(spool: PeerSpool) -> Starlette:
    async def callback(request: Request) -> Response:
        length = request.headers.get("content-length")
        status, body = await handle(
            spool,
            method=request.method,
            path=request.url.path,
            host=request.client.host if request.client else None,
            contentType=request.headers.get("content-type", ""),
            contentLength=int(length) if length and length.isdigit() else None,
            rawQuery=request.scope["query_string"],
            chunks=request.stream(),
        )
        return Response(body, status_code=status, media_type="text/plain")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(routes=[Route("/{tail:path}", callback, methods=methods)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    uvicorn.run(
        makeApp(PeerSpool(args.spool)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
    )


if __name__ == "__main__":
    main()
