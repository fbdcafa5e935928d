# -*- test-case-name: tests.runner.test_sandbox -*-
"""
The sandbox's Docker calls: blocking docker SDK calls in C{_thd_*}
functions for a pool thread, one hop per logical operation (create with the
bait planted, start, exit state, stop, logs, reap), plain data in and out.
Docker's errors become L{SandboxError} with a one-line reason.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any, Callable, Dict, List, Optional

import attrs
from docker import errors as dockerErrors
from twisted.logger import Logger

from fangs.runner.cgroups import cgroupOfPid
from fangs.runner.containerspec import (
    LABEL_PID,
    LABEL_ROLE,
    LABEL_START,
    LaunchPlan,
    SandboxError,
    baitTar,
    resolveUser,
)

log = Logger()


@attrs.frozen
class ExitInfo:
    """
    How a container ended.  C{exitCode} is -1 when it is unknown (the
    container vanished or Docker failed), with C{error} saying why.
    """

    exitCode: int
    error: str = ""
    oomKilled: bool = False

    def describe(self) -> str:
        text = "exit_code=%d" % (self.exitCode,)
        if self.oomKilled:
            text += " oom_killed=true"
        if self.error:
            text += " error=" + self.error
        return text


def _splitImage(image: str) -> tuple[str, str]:
    """
    Repository and tag of an image reference (digest references keep the
    digest as the tag; no tag means C{latest}).
    """
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:]
    return image, "latest"


def _pullStreamError(messages) -> str:
    for message in messages:
        if isinstance(message, dict) and (message.get("error") or message.get("errorDetail")):
            return str(message.get("error") or message["errorDetail"].get("message", "pull failed"))
    return ""


def _thd_ensureImage(api, image: str, policy: str) -> str:
    """
    Apply the pull policy; return the image id to create the container from.
    """
    if policy != "always":
        try:
            return api.inspect_image(image)["Id"]
        except dockerErrors.ImageNotFound:
            if policy == "never":
                raise SandboxError("image %s is not present and pull_policy is never" % (image,)) from None
    repo, tag = _splitImage(image)
    try:
        error = _pullStreamError(api.pull(repo, tag=tag, stream=True, decode=True))
    except dockerErrors.APIError as e:
        raise SandboxError("pull %s: %s" % (image, _apiReason(e))) from None
    if error:
        raise SandboxError("pull %s: %s" % (image, _oneLine(error)))
    try:
        return api.inspect_image(image)["Id"]
    except dockerErrors.ImageNotFound:
        raise SandboxError("pull %s: image still missing after the pull" % (image,)) from None


def _thd_readFile(api, cid: str, path: str, limit: int = 1 << 20) -> Optional[str]:
    """
    A regular file of a created container (C{get_archive}), or C{None}.
    """
    try:
        stream, _ = api.get_archive(cid, path)
        data = b"".join(stream)
    except dockerErrors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.size <= limit:
                f = tar.extractfile(member)
                return f.read().decode("utf-8", "replace") if f is not None else None
    return None


def _thd_exists(api, cid: str, path: str) -> bool:
    try:
        stream, _ = api.get_archive(cid, path)
    except dockerErrors.NotFound:
        return False
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    return True


def _thd_create(api, plan: LaunchPlan) -> Dict[str, Any]:
    """
    Pull per policy, make the run's bait, create the container with the
    bait's environment, resolve its user's home and plant the bait there.
    The container is not started.
    """
    imageID = _thd_ensureImage(api, plan.image, plan.pullPolicy)
    bait = plan.makeBait()
    create = dict(plan.create)
    env = list(create.get("environment") or [])
    given = {item.split("=", 1)[0] for item in env}
    env += ["%s=%s" % kv for kv in sorted(bait.env.items()) if kv[0] not in given]
    create["environment"] = env
    try:
        created = api.create_container(imageID, name=plan.name, **create)
    except dockerErrors.APIError as e:
        raise SandboxError("create container: %s" % (_apiReason(e),)) from None
    cid = created["Id"]
    for warning in created.get("Warnings") or []:
        log.warn("docker create {cid}: {warning}", cid=cid[:12], warning=warning)
    try:
        user = resolveUser(plan.user, _thd_readFile(api, cid, "/etc/passwd") or "", plan.envHome)
        files = bait.filesIn(user.home)
        missingHome = user.home != "/" and not _thd_exists(api, cid, user.home)
        if not api.put_archive(cid, "/", baitTar(files, user.uid, user.gid, user.home, missingHome)):
            raise SandboxError("planting bait files failed")
    except BaseException as e:
        _removeQuietly(api, cid)
        if isinstance(e, dockerErrors.APIError):
            raise SandboxError("plant bait: %s" % (_apiReason(e),)) from None
        raise
    return {"id": cid, "imageID": imageID, "bait": bait, "home": user.home, "uid": user.uid, "gid": user.gid}


def _removeQuietly(api, cid: str) -> None:
    try:
        api.remove_container(cid, force=True)
    except dockerErrors.APIError:
        log.warn("container {cid} not removed after a failed launch", cid=cid[:12])


def _thd_start(api, cid: str) -> Dict[str, Any]:
    try:
        api.start(cid)
        state = api.inspect_container(cid)["State"]
    except BaseException as e:
        _removeQuietly(api, cid)
        if isinstance(e, dockerErrors.APIError):
            raise SandboxError("start container: %s" % (_apiReason(e),)) from None
        raise
    # A container that already exited is not a launch failure: wait() reports it.
    pid = state.get("Pid") or 0
    return {"pid": pid, "status": state.get("Status", ""),
            "cgroup": (cgroupOfPid(pid) or "") if pid else ""}


def _exitInfo(state: Dict[str, Any]) -> ExitInfo:
    return ExitInfo(exitCode=int(state.get("ExitCode", -1)), error=state.get("Error") or "",
                    oomKilled=bool(state.get("OOMKilled")))


def _thd_exitState(api, cid: str) -> Optional[ExitInfo]:
    """
    The container's L{ExitInfo} once it is no longer running, else C{None}.
    """
    try:
        state = api.inspect_container(cid)["State"]
    except dockerErrors.NotFound:
        return ExitInfo(exitCode=-1, error="container removed before it was seen to exit")
    if state.get("Status") in ("created", "running", "restarting", "paused", "removing"):
        return None
    return _exitInfo(state)


def _logText(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _thd_stop(api, cid: str, timeout: float, tail: int) -> Dict[str, Any]:
    """
    Stop, read the exit state and the last log lines, force-remove.
    """
    exit_: Optional[ExitInfo] = None
    logs = ""
    try:
        api.stop(cid, timeout=max(0, int(round(timeout))))
    except dockerErrors.NotFound:
        return {"exit": None, "logs": None}
    except dockerErrors.APIError as e:
        log.warn("stop {cid}: {error}", cid=cid[:12], error=_oneLine(str(e)))
    try:
        exit_ = _exitInfo(api.inspect_container(cid)["State"])
        logs = _logText(api.logs(cid, stdout=True, stderr=True, tail=tail))
    except dockerErrors.APIError as e:
        log.warn("inspect {cid} before removal: {error}", cid=cid[:12], error=_oneLine(str(e)))
    try:
        api.remove_container(cid, force=True)
    except dockerErrors.NotFound:
        pass
    return {"exit": exit_, "logs": logs}


def _thd_logs(api, cid: str, tail: int) -> Optional[str]:
    try:
        return _logText(api.logs(cid, stdout=True, stderr=True, tail=tail))
    except dockerErrors.NotFound:
        return None


def _thd_reap(api, ownPid: int, ownStart: str, alive: Callable[[int, str], bool]) -> List[str]:
    reaped = []
    for c in api.containers(all=True, filters={"label": LABEL_ROLE + "=sandbox"}):
        labels = c.get("Labels") or {}
        pid = labels.get(LABEL_PID, "")
        start = labels.get(LABEL_START, "")
        if pid.isdigit() and (int(pid), start) == (ownPid, ownStart):
            continue
        if pid.isdigit() and start and alive(int(pid), start):
            continue  # another live runner's sandbox
        try:
            api.remove_container(c["Id"], force=True)
            reaped.append(c["Id"])
        except dockerErrors.NotFound:
            pass
    return reaped


def _apiReason(e: dockerErrors.APIError) -> str:
    return _oneLine(e.explanation or str(e))


def _oneLine(text: str) -> str:
    return " ".join(str(text).split())[:400]
