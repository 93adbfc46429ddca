"""
mxrecv killed with -9 at random moments under load, while another process
moves messages out of new/ as an application does: every acknowledged id is
stored exactly once, and MX Telecom's retries of every id sent,
acknowledged or not, never store a second copy.
"""

from __future__ import annotations

import random
import signal
import sys
from collections import Counter
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from .support import SMS, httpClient
from .twistd import runTwistd

# Bounded in count and time: a few hundred callbacks per run of mxrecv,
# each run killed after a random number of acknowledgements.
KILLS = 8
CONCURRENCY = 16
ACKS_BEFORE_KILL = (10, 120)
MAX_PER_LOOP = 1000
MOVER_SECONDS = 300

_MOVER = """
import os, sys, time
new, moved, stop, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + seconds
count = 0
while time.monotonic() < deadline:
    names = os.listdir(new)
    for name in names:
        try:
            os.rename(os.path.join(new, name), os.path.join(moved, f"{name}.{count}"))
        except FileNotFoundError:
            continue
        count += 1
    if not names:
        if os.path.exists(stop):
            break
        time.sleep(0.001)
print(count, flush=True)
"""


class _Mover(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


class KillTests(TestCase):
    @inlineCallbacks
    def test_killedUnderLoadWhileAppMoves(self):
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        note = f"(random seed {seed})"
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        spool = base / "spool"
        moved = base / "moved"
        moved.mkdir()
        stop = base / "stop"
        config = base / "mxrecv.toml"
        config.write_text(
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nallow = ["127.0.0.0/8"]\n'
            f'[spool]\ndir = "{spool}"\n'
        )
        sent: dict[str, bool] = {}
        counter = iter(range(10**9))
        mover = None

        for _ in range(KILLS):
            twistd = runTwistd(self, "--config", str(config))
            port = yield twistd.listening
            if mover is None:
                mover = self.startMover(spool / "new", moved, stop)
            yield self.loadUntilKilled(twistd, port, sent, counter, rng)

        # MX Telecom retries every id it sent until it gets its 200.
        twistd = runTwistd(self, "--config", str(config))
        port = yield twistd.listening
        client = httpClient(self)
        ids = sorted(sent)
        for start in range(0, len(ids), CONCURRENCY):
            codes = yield gatherResults(
                [self.send(client, port, i) for i in ids[start : start + CONCURRENCY]]
            )
            self.assertEqual(set(codes), {200}, note)
        twistd.process.signalProcess("TERM")
        yield twistd.ended
        stop.write_bytes(b"")
        yield mover.ended

        copies = Counter(p.name.rsplit(".", 1)[0] for p in moved.iterdir())
        copies.update(p.name for p in (spool / "new").iterdir())
        acknowledged = [i for i, acked in sent.items() if acked]
        self.assertGreater(len(acknowledged), KILLS * ACKS_BEFORE_KILL[0], note)
        self.assertEqual({i for i in acknowledged if copies[i] != 1}, set(), note)
        self.assertEqual({i: n for i, n in copies.items() if n != 1}, {}, note)
        self.assertEqual(set(copies), set(sent), note)

    def startMover(self, new: Path, moved: Path, stop: Path) -> _Mover:
        """
        The application: a process that renames whatever appears in new/
        to a directory of its own, each under a name of its own, so that a
        second copy of a message would be seen there.
        """
        mover = _Mover()
        process = reactor.spawnProcess(
            mover,
            sys.executable,
            [sys.executable, "-c", _MOVER, str(new), str(moved), str(stop), str(MOVER_SECONDS)],
            env=None,
        )

        def kill():
            if not mover.ended.called:
                try:
                    process.signalProcess(signal.SIGKILL)
                except ProcessExitedAlready:
                    pass
                return mover.ended

        self.addCleanup(kill)
        return mover

    @inlineCallbacks
    def loadUntilKilled(self, twistd, port: int, sent, counter, rng: random.Random):
        """
        Send callbacks from C{CONCURRENCY} loops, new ids and retries of ids
        already sent, and kill the server with -9 as soon as it has
        acknowledged a random number of them (others still in flight).
        """
        client = httpClient(self)
        killAt = rng.randint(*ACKS_BEFORE_KILL)
        acks = 0
        over = False

        @inlineCallbacks
        def loop():
            nonlocal acks, over
            for _ in range(MAX_PER_LOOP):
                if over or twistd.ended.called:
                    return
                roll = rng.random()
                if sent and roll < 0.2:
                    messageId = rng.choice(list(sent))
                else:
                    messageId = f"k{next(counter)}"
                sent.setdefault(messageId, False)
                code = yield self.send(client, port, messageId)
                if code == 200 and not over:
                    sent[messageId] = True
                    acks += 1
                    if acks >= killAt:
                        over = True
                        twistd.process.signalProcess("KILL")
                elif code == 200:
                    sent[messageId] = True

        yield gatherResults([loop() for _ in range(CONCURRENCY)])
        yield twistd.ended

    @inlineCallbacks
    def send(self, client, port: int, messageId: str):
        """
        One GET callback; fire with its status, or None if the connection
        failed.
        """
        try:
            response = yield client.get(
                f"http://127.0.0.1:{port}/", params={**SMS, "id": messageId}, timeout=30
            )
            yield response.content()
        except Exception:
            return None
        return response.code
