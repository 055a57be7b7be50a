# The kernel side of nbsecrets' quiet channel (see agent/quiet.go).
#
# The agent sends this source, followed by one call of _install, in one
# silent execute_request on shell at first contact. It is run by exec() in a
# dict of its own: nothing is bound in the user's namespace, and the cell
# holds no value, only the socket path and a one-time token. What lasts lives
# in sys.modules['_nbsecrets_quiet']: one daemon thread named "nbsecrets"
# that connects to the agent's unix socket, and applies each change the agent
# streams to os.environ (which calls putenv/unsetenv), acknowledging it by
# its sequence number. Values arrive as JSON and go through json.loads only:
# never compile(), so never into linecache or a traceback's source lines.
#
# The thread never writes to sys.stdout or sys.stderr (ipykernel publishes
# any thread's writes on iopub) and lets no exception escape (the threading
# excepthook would print it): a failure is reported to the agent as an
# exception class name, never a value.

import json as _json
import os as _os
import socket as _socket
import stat as _stat
import struct as _struct
import sys as _sys
import threading as _threading
import types as _types

_MANAGED = 'NBSECRETS_MANAGED'
_MAX_FRAME = 16 << 20
_STATE = '_nbsecrets_quiet'


def _state():
    st = _sys.modules.get(_STATE)
    if st is None:
        st = _types.ModuleType(_STATE, 'nbsecrets: the quiet channel into this kernel')
        st.cond = _threading.Condition()
        st.pending = None  # (path, token) handed over by the latest install
        st.sock = None     # the connection being served
        st.thread = None
        st.forked = False  # the at-fork hook is registered
        st.errors = 0      # failures seen (counts only, never a value)
        st.key = b''       # the kernel's connection key, to resume with a new agent
        _sys.modules[_STATE] = st
    return st


def _after_fork_in_child():
    # A fork (multiprocessing) keeps os.environ as it was; only the channel
    # stays with the parent: the child drops its copy of the socket and of
    # the thread (threads do not survive a fork), and a fresh lock, since
    # the thread may have held the old one at the fork.
    st = _sys.modules.get(_STATE)
    if st is None:
        return
    s, st.sock, st.thread, st.pending = st.sock, None, None, None
    st.cond = _threading.Condition()
    if s is not None:
        try:
            s.close()  # the child's copy of the descriptor; the parent's stays open
        except BaseException:
            pass


class _Reader:
    # Reads frames with as few blocking calls as it can: each recv releases
    # the GIL, and taking it back while a cell holds it costs up to a switch
    # interval, so a frame that arrived whole is read in one.
    def __init__(self, s):
        self.s = s
        self.buf = b''

    def frame(self):
        while True:
            if len(self.buf) >= 4:
                (n,) = _struct.unpack('>I', self.buf[:4])
                if n > _MAX_FRAME:
                    raise ValueError('frame too large')
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return _json.loads(body)
                want = 4 + n - len(self.buf)
            else:
                want = 4 - len(self.buf)
            b = self.s.recv(max(want, 65536))
            if not b:
                return None
            self.buf += b


def _send_frame(s, obj):
    body = _json.dumps(obj).encode()
    s.sendall(_struct.pack('>I', len(body)) + body)


def _apply(m):
    env = _os.environ
    sets = m.get('set') or {}
    if m.get('full'):
        drop = set(env.get(_MANAGED, '').split(',')) - set(sets) - {''}
    else:
        drop = m.get('unset') or []
    for k in drop:
        env.pop(k, None)
    for k, v in sets.items():
        env[k] = v
    env[_MANAGED] = m.get('managed', '')


def _connect(path):
    # The socket must be the agent's: a socket file owned by this uid, in a
    # directory of this uid that nobody else can write, and a peer that runs
    # as this uid (SO_PEERCRED); else no token leaves the kernel.
    uid = _os.getuid()
    d = _os.lstat(_os.path.dirname(path))
    if d.st_uid != uid or d.st_mode & 0o022:
        raise PermissionError('socket directory not private')
    f = _os.lstat(path)
    if not _stat.S_ISSOCK(f.st_mode) or f.st_uid != uid:
        raise PermissionError('socket not owned by this user')
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        s.connect(path)
        cred = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _struct.calcsize('3i'))
        _pid, puid, _gid = _struct.unpack('3i', cred)
        if puid != uid:
            raise PermissionError('peer runs as another user')
        s.settimeout(None)
    except BaseException:
        s.close()
        raise
    return s


def _serve(st, path, token):
    # token: the one-time token of an install; None: a resume, proving the
    # kernel's connection key on the agent's challenge. Returns whether the
    # agent sent a change (took the connection).
    s = _connect(path)
    with st.cond:
        if st.pending is not None:
            s.close()  # a newer install arrived meanwhile
            return False
        st.sock = s
    took = False
    try:
        r = _Reader(s)
        if token is not None:
            _send_frame(s, {'v': 1, 'token': token, 'pid': _os.getpid()})
        else:
            _send_frame(s, {'v': 1, 'resume': True, 'pid': _os.getpid()})
            ch = r.frame()
            if not ch or not st.key:
                return False
            import hmac, hashlib
            nonce = bytes.fromhex(ch.get('nonce', ''))
            mac = hmac.new(st.key, b'nbsecrets-quiet-resume\0' + nonce + str(_os.getpid()).encode(), hashlib.sha256).hexdigest()
            _send_frame(s, {'mac': mac})
        while True:
            m = r.frame()
            if m is None:
                return took
            took = True
            seq = m.get('seq')
            try:
                _apply(m)
                ack = {'seq': seq, 'ok': True}
            except BaseException as e:
                st.errors += 1
                ack = {'seq': seq, 'error': type(e).__name__}
            m = None
            _send_frame(s, ack)
    finally:
        with st.cond:
            if st.sock is s:
                st.sock = None
        try:
            s.close()
        except BaseException:
            pass


def _run(st):
    # Serves the latest install's connection; when it ends (the agent
    # stopped or restarted), tries to resume at the same path, every half
    # second for a while, then every five, until an agent takes it or a new
    # install arrives: a new agent serves a kernel that runs a cell without
    # a Jupyter message.
    path, token, tries = None, None, 0
    while True:
        try:
            with st.cond:
                if path is None:
                    while st.pending is None:
                        st.cond.wait()
                elif st.pending is None:
                    st.cond.wait(0.5 if tries < 20 else 5.0)  # as quiet.go says
                if st.pending is not None:
                    path, token = st.pending
                    st.pending = None
                else:
                    token = None
            if _serve(st, path, token):
                tries = 0
            else:
                tries += 1
        except BaseException:
            st.errors += 1  # nothing printed, nothing raised
            tries += 1


def _scrub(marker):
    # IPython caches every cell's source, silent ones too (linecache, and
    # its compiler's filename map): drop the entry of the install cell.
    try:
        import linecache
        caches = [linecache.cache, getattr(linecache, '_ipython_cache', {})]
        names = set()
        for c in caches:
            for k, v in list(c.items()):
                try:
                    if any(marker in line for line in v[2]):
                        names.add(k)
                except BaseException:
                    pass
        for c in caches:
            for k in names:
                c.pop(k, None)
        ip = getattr(_sys.modules.get('IPython'), 'get_ipython', lambda: None)()
        fm = getattr(getattr(ip, 'compile', None), '_filename_map', None)
        if fm is not None:
            for k in names:
                fm.pop(k, None)
    except BaseException:
        pass


def _install(path, token, marker):
    st = _state()
    try:
        ip = getattr(_sys.modules.get('IPython'), 'get_ipython', lambda: None)()
        st.key = bytes(ip.kernel.session.key)
    except BaseException:
        st.key = b''  # no resume; installs still work
    if not st.forked and hasattr(_os, 'register_at_fork'):
        _os.register_at_fork(after_in_child=_after_fork_in_child)
        st.forked = True
    with st.cond:
        st.pending = (path, token)
        old = st.sock
        if old is not None:
            # The previous agent's connection: end it, the thread takes the
            # new one.
            try:
                old.shutdown(_socket.SHUT_RDWR)
            except BaseException:
                pass
        if st.thread is None or not st.thread.is_alive():
            st.thread = _threading.Thread(target=_run, args=(st,), name='nbsecrets', daemon=True)
            st.thread.start()
        st.cond.notify_all()
    _scrub(marker)
