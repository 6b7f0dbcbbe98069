"""install() / uninstall(): make ``multiprocessing`` use fastmgr's managers.

``multiprocessing.Manager()`` and ``get_context(m).Manager()`` import
``SyncManager`` from ``multiprocessing.managers`` when called, so replacing
that module's names is enough in this process and in forked children.
Children started by spawn import fastmgr before they unpickle anything (the
spawn command line is prefixed), and a forkserver started after install()
preloads it, first of all its preload modules.
"""
import multiprocessing.managers as std
from multiprocessing import forkserver, spawn

from . import namespace, proxies, server, sharedmem, sync
from . import managers as ours
from .errors import RemoteError

__all__ = ["install", "uninstall", "installed"]

_AUTOINSTALL = "fastmgr._autoinstall"


def _replacements():
    names = {
        "BaseManager": ours.BaseManager, "State": ours.State, "Server": server.Server,
        "RemoteError": RemoteError, "Token": proxies.Token, "BaseProxy": proxies.BaseProxy,
        "AutoProxy": proxies.AutoProxy, "MakeProxyType": proxies.MakeProxyType,
        "RebuildProxy": proxies.RebuildProxy, "all_methods": server.all_methods,
        "public_methods": server.public_methods, "Namespace": namespace.Namespace,
        "NamespaceProxy": namespace.NamespaceProxy,
        "SharedMemoryManager": sharedmem.SharedMemoryManager,
        "SharedMemoryServer": sharedmem.SharedMemoryServer,
    }
    for name in sync.__all__:
        if name != "Manager":
            names[name] = getattr(sync, name)
    return names


_saved = None   # the stdlib's names, while installed


def installed():
    return _saved is not None


def _spawn_command_line(original):
    def get_command_line(**kwds):
        cmd = original(**kwds)
        # [..., '-c', prog, '--multiprocessing-fork', ...]: import us first
        i = cmd.index("-c") + 1
        return cmd[:i] + ["import %s; %s" % (_AUTOINSTALL, cmd[i])] + cmd[i + 1:]
    get_command_line.__wrapped__ = original
    return get_command_line


def _autoinstall_first(modules_names):
    """A forkserver preload list that installs us before anything else.

    The forkserver imports its preload modules in order, and a module that
    subclasses a manager (``class MyManager(BaseManager)`` after ``from
    multiprocessing.managers import BaseManager``) binds whichever class is
    there when it is imported.  Preloaded before us, its managers would be
    the stdlib's in every child the forkserver makes, while the parent's
    are ours.  ``__main__`` in the list does not help: until CPython fixed
    gh-126631 (not in 3.10-3.12, nor in 3.13.0), the forkserver never
    imports the main module, whatever its top calls; each child re-imports
    it after the fork, too late for the modules the forkserver holds.
    """
    return [_AUTOINSTALL] + [name for name in modules_names if name != _AUTOINSTALL]


def _keep_autoinstall(original):
    """set_forkserver_preload() that keeps us preloaded first while installed
    (a program, or CPython's test suite, may set its own list after
    install())."""
    def set_forkserver_preload(modules_names, *args, **kwargs):
        original(_autoinstall_first(modules_names), *args, **kwargs)
    set_forkserver_preload.__wrapped__ = original
    return set_forkserver_preload


def install():
    """Make multiprocessing's managers fastmgr's (idempotent)."""
    global _saved
    if _saved is not None:
        return
    replacements = _replacements()
    saved = {name: getattr(std, name, None) for name in replacements}
    saved["spawn.get_command_line"] = spawn.get_command_line
    saved["forkserver.set_forkserver_preload"] = forkserver.set_forkserver_preload
    for name, value in replacements.items():
        setattr(std, name, value)
    spawn.get_command_line = _spawn_command_line(spawn.get_command_line)
    forkserver.set_forkserver_preload = _keep_autoinstall(forkserver.set_forkserver_preload)
    forkserver.set_forkserver_preload(list(forkserver._forkserver._preload_modules))
    _saved = saved


def uninstall():
    """Undo install()."""
    global _saved
    if _saved is None:
        return
    saved, _saved = _saved, None
    spawn.get_command_line = saved.pop("spawn.get_command_line")
    forkserver.set_forkserver_preload = saved.pop("forkserver.set_forkserver_preload")
    # the list as the program left it (it may have set its own), less us
    forkserver.set_forkserver_preload(
        [name for name in forkserver._forkserver._preload_modules if name != _AUTOINSTALL])
    for name, value in saved.items():
        if value is None:
            delattr(std, name)
        else:
            setattr(std, name, value)
