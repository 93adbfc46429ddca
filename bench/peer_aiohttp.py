"""
A peer receiver on aiohttp, doing mxrecv's job (see L{peercommon}).

    python bench/peer_aiohttp.py --port 18411 --spool DIR [--cert C --key K]
"""

from __future__ import annotations

import argparse
import ssl

from aiohttp import web
from peercommon import CHUNK, PeerSpool, handle


def makeApp(spool: PeerSpool) -> web.Application:
    async def callback(request: web.Request) -> web.Response:
        status, body = await handle(
            spool,
            method=request.method,
            path=request.path,
            host=request.remote,
            contentType=request.headers.get("Content-Type", ""),
            contentLength=request.content_length,
            rawQuery=request.rel_url.raw_query_string.encode("ascii", "replace"),
            chunks=request.content.iter_chunked(CHUNK),
        )
        return web.Response(status=status, body=body, content_type="text/plain")

    app = web.Application(client_max_size=1024 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", callback)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    web.run_app(
        makeApp(PeerSpool(args.spool)),
        host="127.0.0.1",
        port=args.port,
        ssl_context=context,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
