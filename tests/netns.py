"""Network-namespace harness for real network faults (root only; no traffic leaves the machine).

Topology (everything lives in two throw-away namespaces; the root namespace gets no address,
no interface, no route)::

    fsmv-c-<pid>-<rand>                         fsmv-p-<pid>-<rand>
    +---------------------------+               +------------------------------------------+
    | lo                        |    veth       | lo                                       |
    | vc<rand>  10.213.N.1/24  <=================> vp<rand>  10.213.N.2/24 (peer HTTP+ICE) |
    |   client agent (session)  |               |           10.213.N.4/24 (udp relay, opt.)|
    +---------------------------+               |   peer agent (RealtimePeer)              |
                                                +------------------------------------------+

``N`` is random per :class:`NetnsPair` (the pairs are isolated from each other anyway: each has
its own network stacks). The veth pair is created directly inside the namespaces
(``ip link add ... netns A type veth peer ... netns B``), so it never exists in the root namespace.
IPv6 is disabled in both namespaces: the only non-loopback address is the IPv4 one, which matters
when a client gathers its candidates itself (``--host-address auto``).

Faults (all reversible, all removed by :meth:`NetnsPair.close`):

* :meth:`~NetnsPair.drop_start` / :meth:`~NetnsPair.drop_stop`: a blackout, iptables ``DROP`` on
  the *ingress* of both veth ends (client ``INPUT`` and peer ``INPUT``). Dropping at ingress on
  both sides blocks both directions like a dead network link does: senders see their datagrams
  vanish. (A ``DROP`` in the sender's own ``OUTPUT`` chain is not the same fault: Linux fails the
  ``sendto``/``connect`` at once with ``EPERM``, which no real outage does.)
* :meth:`~NetnsPair.drop_path`: the same, for the datagrams of one ICE path (client
  ``ip:port`` <-> peer ``ip:port``) only: that path is dead, a restart finds a fresh one.
* :meth:`~NetnsPair.link_down` / :meth:`~NetnsPair.link_up`: ``ip link set ... down/up`` of the
  client's end.
* :meth:`~NetnsPair.random_loss`: ``-m statistic --mode random --probability p`` DROP at both
  ingresses (so each direction loses ``p``).
* :meth:`~NetnsPair.change_address`: replace the client's address by another in the subnet.

Agents (``tests/netns_agent.py``) run inside the namespaces with ``ip netns exec`` and speak JSON
lines: :class:`Agent` starts one, collects its lines in a background thread and lets a test wait
for a line matching a predicate.

A sweep at construction deletes stale ``fsmv-*`` namespaces whose creating process (the pid in
the name) is gone, e.g. after a killed test run; live runs in parallel are left alone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "tests" / "netns_agent.py"
PYTHON = sys.executable
PREFIX = "fsmv-"
_NAME = re.compile(r"^fsmv-[cp]-(\d+)-[0-9a-z]+$")


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here (None when they can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns, veth, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return (
                f"network namespace tests need the {tool!r} command (apt-get install "
                "iproute2 iptables)"
            )
    return _probe()


@functools.cache
def _probe() -> str | None:
    """Create and delete one namespace with iptables in it (e.g. a container without
    CAP_SYS_ADMIN / CAP_NET_ADMIN fails here)."""
    ns = f"{PREFIX}c-{os.getpid()}-probe0"
    try:
        made = run("ip", "netns", "add", ns, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        ipt = run("ip", "netns", "exec", ns, "iptables", "-w", "-L", "INPUT", check=False)
        if ipt.returncode != 0:
            return f"iptables does not work in a network namespace: {ipt.stderr.strip()}"
        return None
    finally:
        run("ip", "netns", "del", ns, check=False)


def run(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run one command (no shell), raise with its stderr when it fails and ``check``."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_pids(ns: str) -> None:
    """Kill what still runs inside ``ns`` (only our own namespaces ever get here)."""
    out = run("ip", "netns", "pids", ns, check=False).stdout
    for token in out.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(token), signal.SIGKILL)


def delete_namespace(ns: str) -> None:
    _kill_namespace_pids(ns)
    run("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Delete ``fsmv-*`` namespaces whose creating process is gone; return their names."""
    removed = []
    for ns in list_namespaces():
        m = _NAME.match(ns)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        delete_namespace(ns)
        removed.append(ns)
    return removed


class NetnsPair:
    """Two namespaces joined by a veth pair; see the module docstring. Use as a context manager.

    ``client_ip`` / ``peer_ip`` are the current addresses; ``relay_ip`` is an extra address of the
    peer namespace, added by :meth:`add_relay_address`.
    """

    def __init__(self, subnet: int | None = None) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        sweep_stale()
        tag = f"{os.getpid()}-{random.getrandbits(24):06x}"
        short = tag.rsplit("-", 1)[1]
        self.client_ns = f"{PREFIX}c-{tag}"
        self.peer_ns = f"{PREFIX}p-{tag}"
        self.client_if = f"vc{short}"
        self.peer_if = f"vp{short}"
        self.n = subnet if subnet is not None else random.randint(1, 254)
        self.client_ip = f"10.213.{self.n}.1"
        self.peer_ip = f"10.213.{self.n}.2"
        self.relay_ip = f"10.213.{self.n}.4"
        self._rules: list[tuple[str, tuple[str, ...]]] = []  # (ns, rule spec) for cleanup
        self._drop: list[tuple[str, tuple[str, ...]]] = []
        self._loss: list[tuple[str, tuple[str, ...]]] = []
        self.agents: list[Agent] = []
        self._created = False

    # -- set-up / tear-down --------------------------------------------------------------------
    def __enter__(self) -> NetnsPair:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        self._created = True
        for ns in (self.client_ns, self.peer_ns):
            run("ip", "netns", "add", ns)
            self.exec(ns, "ip", "link", "set", "lo", "up")
            for key in ("all", "default", "lo"):
                self.exec(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1", check=False)
        run(
            "ip",
            "link",
            "add",
            self.client_if,
            "netns",
            self.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            self.peer_if,
            "netns",
            self.peer_ns,
        )
        self.exec(
            self.client_ns, "ip", "addr", "add", f"{self.client_ip}/24", "dev", self.client_if
        )
        self.exec(self.peer_ns, "ip", "addr", "add", f"{self.peer_ip}/24", "dev", self.peer_if)
        self.exec(self.client_ns, "ip", "link", "set", self.client_if, "up")
        self.exec(self.peer_ns, "ip", "link", "set", self.peer_if, "up")

    def close(self) -> None:
        """Stop every agent, then delete both namespaces (rules and veth go with them)."""
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.kill()
        if self._created:
            for ns in (self.client_ns, self.peer_ns):
                delete_namespace(ns)
            self._created = False

    def exec(
        self, ns: str, *args: str, check: bool = True, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)

    # -- faults ----------------------------------------------------------------------------------
    def _iptables(self, ns: str, op: str, spec: Sequence[str]) -> None:
        self.exec(ns, "iptables", "-w", op, *spec)

    def _add_rules(self, rules: list[tuple[str, tuple[str, ...]]]) -> None:
        for ns, spec in rules:
            self._iptables(ns, "-I", spec)

    def _remove_rules(self, rules: list[tuple[str, tuple[str, ...]]]) -> None:
        for ns, spec in rules:
            self.exec(ns, "iptables", "-w", "-D", *spec, check=False)
        rules.clear()

    def _ingress(self, extra: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
        return [
            (self.client_ns, ("INPUT", "-i", self.client_if, *extra, "-j", "DROP")),
            (self.peer_ns, ("INPUT", "-i", self.peer_if, *extra, "-j", "DROP")),
        ]

    def drop_start(self, *, udp_only: bool = False) -> float:
        """Black out the link both ways (ingress DROP on both ends); return time.monotonic()."""
        if self._drop:
            raise RuntimeError("a blackout is already in place")
        rules = self._ingress(("-p", "udp") if udp_only else ())
        self._add_rules(rules)
        self._drop = rules
        return time.monotonic()

    def drop_stop(self) -> float:
        self._remove_rules(self._drop)
        return time.monotonic()

    def drop_path(self, local: str, remote: str) -> float:
        """Kill one ICE path only: ingress DROP, both ways, of the UDP datagrams between the
        client's ``local`` and the peer's ``remote`` ("ip:port" each). Every other path (new
        sockets of a restart, the HTTP signaling) still works. Return time.monotonic()."""
        if self._drop:
            raise RuntimeError("a blackout is already in place")
        lip, lport = local.rsplit(":", 1)
        rip, rport = remote.rsplit(":", 1)
        rules = [
            (self.client_ns, ("INPUT", "-i", self.client_if, "-p", "udp", "-s", rip, "--sport",
                              rport, "-d", lip, "--dport", lport, "-j", "DROP")),
            (self.peer_ns, ("INPUT", "-i", self.peer_if, "-p", "udp", "-s", lip, "--sport",
                            lport, "-d", rip, "--dport", rport, "-j", "DROP")),
        ]
        self._add_rules(rules)
        self._drop = rules
        return time.monotonic()

    def random_loss(self, p: float) -> float:
        """Drop each UDP datagram with probability ``p`` at both ingresses (0 removes it)."""
        self._remove_rules(self._loss)
        if p > 0:
            rules = self._ingress(
                ("-p", "udp", "-m", "statistic", "--mode", "random", "--probability", f"{p:.4f}")
            )
            self._add_rules(rules)
            self._loss = rules
        return time.monotonic()

    def block_direct_udp(self) -> None:
        """Client namespace drops UDP coming from the peer's own address: with a relay in front
        of the peer, the relay (``relay_ip``) is then the only media path."""
        spec = ("INPUT", "-i", self.client_if, "-p", "udp", "-s", self.peer_ip, "-j", "DROP")
        self._iptables(self.client_ns, "-I", spec)
        self._rules.append((self.client_ns, spec))

    def link_down(self) -> float:
        self.exec(self.client_ns, "ip", "link", "set", self.client_if, "down")
        return time.monotonic()

    def link_up(self) -> float:
        self.exec(self.client_ns, "ip", "link", "set", self.client_if, "up")
        return time.monotonic()

    def change_address(self, host: int = 3) -> str:
        """Replace the client's address by ``10.213.N.<host>``; return the new address."""
        new = f"10.213.{self.n}.{host}"
        if new == self.client_ip:
            raise ValueError(f"{new} is already the client's address")
        # Delete first: deleting a primary address also deletes its secondaries.
        self.exec(
            self.client_ns, "ip", "addr", "del", f"{self.client_ip}/24", "dev", self.client_if
        )
        self.exec(self.client_ns, "ip", "addr", "add", f"{new}/24", "dev", self.client_if)
        self.client_ip = new
        return new

    def add_relay_address(self) -> str:
        self.exec(self.peer_ns, "ip", "addr", "add", f"{self.relay_ip}/24", "dev", self.peer_if)
        return self.relay_ip

    # -- agents ----------------------------------------------------------------------------------
    def start_peer(self, *extra: str, port: int = 8800) -> Agent:
        """Start the peer agent in the peer namespace; wait for its ``ready`` line."""
        agent = Agent(self.peer_ns, "peer", "--host", self.peer_ip, "--port", str(port), *extra)
        self.agents.append(agent)
        agent.wait_for(lambda m: m.get("type") == "ready", timeout=20)
        return agent

    def start_client(self, peer: Agent, *extra: str, host_address: str | None = None) -> Agent:
        ready = peer.first(lambda m: m.get("type") == "ready")
        assert ready is not None
        agent = Agent(
            self.client_ns,
            "client",
            "--base-url",
            ready["base_url"],
            "--host-address",
            host_address or self.client_ip,
            *extra,
        )
        self.agents.append(agent)
        return agent


Message = dict[str, Any]


class Agent:
    """One ``tests/netns_agent.py`` process inside a namespace, JSON lines both ways."""

    def __init__(self, ns: str, *args: str) -> None:
        self.ns = ns
        self.role = args[0]
        cmd = ["ip", "netns", "exec", ns, PYTHON, str(AGENT), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            bufsize=1,
        )
        self.messages: list[Message] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"type": "raw", "line": line}
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line.rstrip())
                del self.stderr[:-200]

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def first(self, pred: Callable[[Message], bool], after: int = 0) -> Message | None:
        with self._cond:
            return next((m for m in self.messages[after:] if pred(m)), None)

    def select(self, pred: Callable[[Message], bool]) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if pred(m)]

    def wait_for(self, pred: Callable[[Message], bool], timeout: float, after: int = 0) -> Message:
        """The first message (from index ``after``) matching ``pred``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[after:]:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    tail = "\n".join(self.stderr[-25:])
                    why = "exited" if self._eof else f"timed out after {timeout:.1f}s"
                    raise TimeoutError(
                        f"{self.role} agent in {self.ns} {why} waiting for a message; last "
                        f"messages: {self.messages[-5:]}\nstderr tail:\n{tail}"
                    )
                self._cond.wait(min(left, 0.5))

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def stop(self, timeout: float = 20.0) -> Message:
        """Ask the agent to stop; return its ``summary`` line."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send(cmd="stop")
        summary = self.wait_for(lambda m: m.get("type") == "summary", timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=2)


@contextlib.contextmanager
def netns_pair(subnet: int | None = None) -> Iterator[NetnsPair]:
    with NetnsPair(subnet) as pair:
        yield pair
