"""An OCI image archive unpacked, and its entry point run as the chart runs it.

There is no container engine that can run a container on CI's machines (``podman
run`` cannot raise rlimits there), so the tests do what a runtime does, with the
kernel's own tools: :func:`unpack` applies the image's layers in order (OCI
whiteouts included) to a directory, and :func:`command` builds an ``unshare`` +
``chroot`` command line that runs a process in it as the image's user, with the
root filesystem bind-mounted read-only, a writable /tmp, /proc, /dev and the given
files mounted where the chart's volumes go.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class ImageConfig:
    """What a runtime takes from the image's config (OCI image-spec "config")."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> ImageConfig:
        section = config.get("config") or {}
        env = dict(item.split("=", 1) for item in section.get("Env") or [])
        return cls(
            user=section.get("User") or "",
            env=env,
            entrypoint=list(section.get("Entrypoint") or []),
            cmd=list(section.get("Cmd") or []),
        )


@dataclass(frozen=True)
class Mount:
    """A host file or directory mounted into the container, as a volume is."""

    source: Path
    target: str
    read_only: bool = True


def _read(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = archive.extractfile(name)
    if handle is None:
        raise ValueError(f"{name} is not a file in the archive")
    return handle


def _read_json(archive: tarfile.TarFile, name: str) -> dict[str, Any]:
    with _read(archive, name) as handle:
        loaded: dict[str, Any] = json.load(handle)
        return loaded


def _blob(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _within(dest: Path, relative: PurePosixPath) -> Path:
    """dest/relative with its parent resolved; refused when that leaves dest (a
    path through one of the image's absolute symlinks would reach the host's files)."""
    parent = Path(os.path.realpath(dest / relative.parent))
    if not parent.is_relative_to(os.path.realpath(dest)):
        raise ValueError(f"{relative} resolves outside {dest}")
    return parent / relative.name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # tarfile's "tar" filter refuses paths that resolve outside dest; it also strips
    # setuid and group/other write bits, which an image keeps: put the mode back
    # once the path is checked.
    return tarfile.tar_filter(member, dest).replace(mode=member.mode, deep=False)


def _apply_layer(layer: IO[bytes], dest: Path) -> None:
    with tarfile.open(fileobj=layer, mode="r:*") as tar:
        members = tar.getmembers()
        # Whiteouts first: they remove what lower layers put there, never what
        # this layer adds.
        for member in members:
            path = PurePosixPath(member.name.lstrip("/"))
            if path.name == OPAQUE:
                directory = _within(dest, path).parent
                if directory.is_dir():
                    for child in directory.iterdir():
                        _remove(child)
            elif path.name.startswith(WHITEOUT):
                _remove(_within(dest, path.parent / path.name[len(WHITEOUT) :]))
        for member in members:
            path = PurePosixPath(member.name.lstrip("/"))
            if path.name.startswith(WHITEOUT):
                continue
            target = _within(dest, path)
            replaces = target.exists() or target.is_symlink()
            if replaces and not (member.isdir() and target.is_dir() and not target.is_symlink()):
                _remove(target)
            tar.extract(member, dest, numeric_owner=True, filter=_member_filter)


def unpack(archive_path: Path, dest: Path) -> ImageConfig:
    """Apply the single image of an OCI archive to ``dest``; its config."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path) as archive:
        manifests = _read_json(archive, "index.json")["manifests"]
        if len(manifests) != 1:
            raise ValueError(f"{archive_path}: {len(manifests)} images, expected one")
        manifest = _read_json(archive, _blob(manifests[0]["digest"]))
        config = _read_json(archive, _blob(manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            with _read(archive, _blob(layer["digest"])) as handle:
                _apply_layer(handle, dest)
    return ImageConfig.from_json(config)


# Runs in a mount namespace of its own (unshare), as root until chroot drops to the
# image's user. Arguments: MOUNT CHROOT (the host's tools: the environment is the
# image's), ROOTFS USER, then SOURCE TARGET ro|rw triples, "--", argv.
_RUN = r"""
set -eu
mount=$1; chroot=$2; root=$3; user=$4; shift 4
"$mount" --bind "$root" "$root"
"$mount" -t proc proc "$root/proc"
"$mount" --rbind /dev "$root/dev"
while [ "$1" != -- ]; do
    "$mount" --bind "$1" "$root$2"
    if [ "$3" = ro ]; then "$mount" -o remount,bind,ro "$root$2"; fi
    shift 3
done
shift
"$mount" -o remount,bind,ro "$root"
exec "$chroot" --userspec="$user" "$root" "$@"
"""


def _host_tool(name: str) -> str:
    found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise FileNotFoundError(f"{name} is not installed")
    return found


def command(rootfs: Path, config: ImageConfig, argv: list[str], mounts: list[Mount]) -> list[str]:
    """The command line that runs ``argv`` in ``rootfs`` as the image's user.

    Mount points are created in ``rootfs`` first, as a runtime does before it
    makes the root read-only. Run it with :func:`environment`'s variables.
    """
    args = [_host_tool("unshare"), "--mount", "--propagation", "private", "--"]
    args += ["/bin/sh", "-c", _RUN, "run-in-image", _host_tool("mount"), _host_tool("chroot")]
    args += [str(rootfs), config.user or "0:0"]
    for mount in mounts:
        target = rootfs / mount.target.lstrip("/")
        if mount.source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        args += [str(mount.source), mount.target, "ro" if mount.read_only else "rw"]
    return [*args, "--", *argv]


def environment(
    rootfs: Path, config: ImageConfig, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The process's environment: the image's, then what the Pod spec adds, and a
    HOME from the image's /etc/passwd when neither sets one (as containerd does)."""
    env = {**config.env, **(extra or {})}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if "HOME" not in env:
        uid = config.user.partition(":")[0] or "0"
        for line in (rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and uid in (fields[0], fields[2]):
                env["HOME"] = fields[5]
                break
        else:
            env["HOME"] = "/"
    return env


def writable_dir(path: Path) -> Path:
    """A directory any user may write, as the kubelet makes an emptyDir."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    return path
