"""
Benchmark of GET-mode MMS retrieval (run by hand, figures in docs/retrieve.md):
N notifications journaled in pending/ are drained against a RetrieveMMS
stand-in on loopback that serves zips of SIZE bytes.  Reports the time to
drain (from start-up resume to the last message in new/), the peak number of
downloads in flight (ours, and as the stand-in saw them), and peak RSS of the
mxrecv side.  The stand-in runs in a child process so that its memory is not
counted.

    PYTHONPATH=. /tmp/venv/bin/python bench/bench_retrieve.py [--count 1000]
        [--size 102400] [--concurrency 8] [--no-fsync]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.python.threadpool import ThreadPool

from mxrecv.config import RetrieveConfig
from mxrecv.message.dates import isoFromTimestamp
from mxrecv.message.model import Message
from mxrecv.mms.complete import Completer
from mxrecv.mms.pending import PendingWork
from mxrecv.mms.retrieve import makeRetriever
from mxrecv.spool.layout import NEW, PENDING
from mxrecv.spool.store import Spool
from mxrecv.spool.writer import FileWriters

CHILD = """
import sys
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import WrappingFactory
from mxrecv.testing.retrievemms import QuietSite, RetrieveMMS
class Counting(WrappingFactory):
    peak = 0
    def registerProtocol(self, p):
        super().registerProtocol(p)
        Counting.peak = max(Counting.peak, len(self.protocols))
standIn = RetrieveMMS(reactor, zipSize=int(sys.argv[1]))
factory = Counting(QuietSite(standIn))
port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=512)
class Control(LineReceiver):
    delimiter = b"\\n"
    def connectionMade(self):
        self.sendLine(str(port.getHost().port).encode())
    def lineReceived(self, line):
        self.sendLine(f"{Counting.peak} {len(standIn.requests)}".encode())
    def connectionLost(self, reason):
        reactor.stop()
stdio.StandardIO(Control())
reactor.run()
"""


def rssMiB() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@inlineCallbacks
def run(args: argparse.Namespace, url: str, root: Path):
    pool = ThreadPool(minthreads=1, maxthreads=16, name="bench-io")
    pool.start()
    # As in mxrecv.tap: the downloads' writers on a pool of their own.
    writerPool = ThreadPool(minthreads=1, maxthreads=4, name="bench-writers")
    writerPool.start()
    spool = Spool(root, reactor=reactor, pool=pool, sync=args.fsync)
    spool.open()
    now = reactor.seconds()
    accepts = [
        spool.accept(
            Message(
                id=f"bench-{i}",
                type="mms",
                sender="447700900123",
                to=("84545",),
                date="2026-11-25 10:00:00",
                delivery="get",
                received=isoFromTimestamp(now),
                expiry=None,
            ),
            PENDING,
        )
        for i in range(args.count)
    ]
    names = [a.name for _, a in (yield DeferredList(accepts, fireOnOneErrback=True))]
    rssBefore = rssMiB()
    completer = Completer(spool, reactor=reactor, pool=pool)
    retriever = makeRetriever(
        RetrieveConfig(
            url=url, user="bench", password="secret", concurrency=args.concurrency,
            timeout=60.0,
        ),
        spool=spool,
        completer=completer,
        reactor=reactor,
        pool=pool,
        writers=FileWriters(reactor=reactor, pool=writerPool),
        zone=ZoneInfo("Europe/London"),
        maxBody=100 * 1024 * 1024,
    )
    done = [retriever.whenDone(n) for n in names]
    start = time.perf_counter()
    PendingWork(spool, completer, retrieve=retriever, clock=reactor).resume()
    outcomes = yield DeferredList(done, fireOnOneErrback=True)
    elapsed = time.perf_counter() - start
    yield retriever.stop()
    spool.close()
    writerPool.stop()
    pool.stop()
    failed = [o for _, o in outcomes if type(o).__name__ != "Completed"]
    inNew = len(list(spool.dir(NEW).iterdir()))
    return elapsed, retriever.peakInFlight, len(failed), inNew, rssBefore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100 * 1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.size)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    port = int(child.stdout.readline())
    url = f"http://127.0.0.1:{port}/RetrieveMMS"
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench-retrieve-", dir=os.getcwd()) as tmp:

        def go():
            d = run(args, url, Path(tmp) / "spool")
            d.addBoth(lambda r: (result.__setitem__("r", r), reactor.stop()))

        reactor.callWhenRunning(go)
        reactor.run()
        child.stdin.write(b"stats\n")
        child.stdin.flush()
        peakServer, requests = map(int, child.stdout.readline().split())
        child.stdin.close()
        child.wait(10)
    r = result["r"]
    if not isinstance(r, tuple):
        r.raiseException()
    elapsed, peakInFlight, failed, inNew, rssBefore = r
    print(
        f"count={args.count} size={args.size} concurrency={args.concurrency} "
        f"fsync={args.fsync}\n"
        f"  drained in {elapsed:.2f} s ({args.count / elapsed:.0f} MMS/s, "
        f"{args.count * args.size / elapsed / 1e6:.1f} MB/s)\n"
        f"  in new/: {inNew}, not completed: {failed}, requests served: {requests}\n"
        f"  peak in flight: {peakInFlight} (stand-in: {peakServer} connections at once)\n"
        f"  peak RSS: {rssMiB():.1f} MiB (after journaling, before draining: {rssBefore:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
