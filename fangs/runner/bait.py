"""
Bait credentials a stealer cannot tell from the real thing, fresh for every
run.

Pure functions (no Twisted, no Docker).  L{makeBait} returns the files to
plant in the home of the user the sandbox runs as, the environment variables
to give it, and the canaries (bait name -> value) the sensor looks for in
outbound payloads:

  - SSH private keys that parse: a real ed25519 and a real RSA key in
    OpenSSH format, with their C{.pub} files;
  - AWS keys in the real format: C{AKIA} + 16 characters of the base32
    alphabet AWS key ids use (upper-case letters and 2-7), a 40-character
    secret from C{[A-Za-z0-9/+]};
  - npm (C{npm_}), GitHub (C{ghp_}, C{gho_}) tokens: prefix + 30 random
    base62 characters + the 6-character base62 CRC32 checksum these token
    formats carry;
  - C{~/.npmrc} (an auth token line for the public registry, which npm
    accepts for installs), C{~/.git-credentials}, C{~/.config/gh/hosts.yml},
    gcloud application default credentials, C{~/.kube/config} (with a real CA
    certificate), C{~/.docker/config.json};
  - the environment variables C{GITHUB_TOKEN}, C{NPM_TOKEN},
    C{AWS_ACCESS_KEY_ID} and C{AWS_SECRET_ACCESS_KEY}.

Every value that can leave the sandbox is a canary under its own name, so a
leak says which bait (and so which route: file or environment) it came from.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import zlib
from typing import Dict, List, Mapping, Optional

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fangs.wire import WatchedPath

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: AWS access key ids are C{AKIA} + 16 characters of this alphabet.
AWS_KEY_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
AWS_SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+"
#: The public OAuth client of the gcloud CLI, as found in every real ADC file.
GCLOUD_CLIENT_ID = "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com"
GCLOUD_CLIENT_SECRET = "d-FL95Q19q7MQmFpd7hHD0Ty"

#: Paths below the home that hold bait, watched with the cred tag (a
#: trailing C{/} is a directory prefix).
BAIT_PREFIXES = (
    ".ssh/",
    ".aws/",
    ".npmrc",
    ".git-credentials",
    ".config/gh/",
    ".config/gcloud/",
    ".kube/",
    ".docker/",
)

_USERS = ("alex", "sam", "jordan", "taylor", "morgan", "casey", "jamie", "riley", "devon", "robin")
_HOSTS = ("laptop", "devbox", "ws", "mbp", "build", "dev")
_REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2")


def _choice(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def base62(number: int, width: int) -> str:
    out = ""
    while number:
        number, digit = divmod(number, 62)
        out = BASE62[digit] + out
    return out.rjust(width, "0")[-width:]


def checksummedToken(prefix: str) -> str:
    """
    C{prefix} + 30 random base62 characters + their CRC32 in 6 base62
    characters: the shape of GitHub's and npm's tokens (36 characters after
    the prefix).
    """
    body = _choice(BASE62, 30)
    return prefix + body + base62(zlib.crc32(body.encode()), 6)


def tokenChecksumOK(token: str) -> bool:
    """
    Whether the last 6 characters of C{token} are the CRC32 of the 30 before.
    """
    body, check = token[-36:-6], token[-6:]
    return len(token) >= 36 and base62(zlib.crc32(body.encode()), 6) == check


def awsKeyID() -> str:
    return "AKIA" + _choice(AWS_KEY_ID_ALPHABET, 16)


def awsSecret() -> str:
    return _choice(AWS_SECRET_ALPHABET, 40)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: str, subject: str) -> str:
    header = {"alg": "RS256", "kid": _b64url(secrets.token_bytes(32))}
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())  # token contents, not logic
    claims = {"aud": ["https://kubernetes.default.svc"], "exp": now + 31536000, "iat": now, "iss": issuer,
              "sub": subject}
    return ".".join([_b64url(json.dumps(header, separators=(",", ":")).encode()),
                     _b64url(json.dumps(claims, separators=(",", ":")).encode()),
                     _b64url(secrets.token_bytes(256))])


def _caCertificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=200))
            .not_valid_after(now + datetime.timedelta(days=3450))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _sshKeys(private, comment: str) -> tuple[str, str]:
    priv = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()
    pub = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH).decode()
    return priv, pub + " " + comment + "\n"


def keyMarker(pem: str) -> str:
    """
    The canary of a private key file: its middle line of base64 (key
    material, past the fixed OpenSSH header), found in the file sent as is
    or base64-encoded inside a larger document.
    """
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return body[len(body) // 2]


@attrs.frozen
class Bait:
    """
    One run's bait.

    @ivar files: path relative to the home -> content.
    @ivar env: environment variables for the sandbox.
    @ivar canaries: bait name -> the value whose leaving the sandbox is a
        C{canary_exfiltrated} event.
    """

    files: Mapping[str, str]
    env: Mapping[str, str]
    canaries: Mapping[str, str]

    def filesIn(self, home: str) -> Dict[str, str]:
        """
        Absolute path in the sandbox -> content, for the home C{home}.
        """
        home = home.rstrip("/") or ""
        return {home + "/" + rel: content for rel, content in self.files.items()}

    def pathsIn(self, home: str) -> List[str]:
        return sorted(self.filesIn(home))


def watchedPathsFor(home: str, jobPaths: Optional[List[WatchedPath]] = None) -> List[WatchedPath]:
    """
    Watched paths to add for a sandbox whose user lives in C{home}: the bait
    locations with the cred tag, and every C{/root/...} path of the job
    mirrored under C{home} (the orchestrator's defaults are written for root).
    """
    home = home.rstrip("/") or "/"
    base = "" if home == "/" else home
    out: List[WatchedPath] = []
    if home != "/root":
        for p in jobPaths or []:
            if p.prefix == "/root" or p.prefix.startswith("/root/"):
                out.append(WatchedPath(base + p.prefix[len("/root"):] or "/", p.cred_tagged))
    for rel in BAIT_PREFIXES:
        out.append(WatchedPath(base + "/" + rel, True))
    seen = {(p.prefix, p.cred_tagged) for p in jobPaths or []}
    unique: List[WatchedPath] = []
    for p in out:
        if (p.prefix, p.cred_tagged) not in seen:
            seen.add((p.prefix, p.cred_tagged))
            unique.append(p)
    return unique


def makeBait(rsaBits: int = 2048) -> Bait:
    """
    Fresh bait for one run (blocking for RSA key generation: call it on a
    thread).
    """
    user = secrets.choice(_USERS) + str(secrets.randbelow(90) + 10)
    comment = "%s@%s-%s" % (user, secrets.choice(_HOSTS), _choice("0123456789abcdef", 4))
    edPriv, edPub = _sshKeys(ed25519.Ed25519PrivateKey.generate(), comment)
    rsaPriv, rsaPub = _sshKeys(rsa.generate_private_key(public_exponent=65537, key_size=rsaBits), comment)

    npmrcToken = checksummedToken("npm_")
    envNpmToken = checksummedToken("npm_")
    envGithub = checksummedToken("ghp_")
    gitCredToken = checksummedToken("ghp_")
    ghOauth = checksummedToken("gho_")
    akid, secret = awsKeyID(), awsSecret()
    envAkid, envSecret = awsKeyID(), awsSecret()
    refresh = "1//0" + _choice(BASE62[:10], 1) + _choice(BASE62 + "-_", 98)
    region = secrets.choice(_REGIONS)
    cluster = _choice("0123456789ABCDEF", 32)
    kubeToken = _jwt("https://oidc.eks.%s.amazonaws.com/id/%s" % (region, cluster),
                     "system:serviceaccount:ci:deployer")
    dockerPat = "dckr_pat_" + _choice(BASE62 + "-_", 27)
    dockerAuth = base64.b64encode(("%s:%s" % (user, dockerPat)).encode()).decode()
    ca = base64.b64encode(_caCertificate()).decode()
    project = "%s-%s-%d" % (secrets.choice(("prod", "infra", "data", "web")), user.rstrip("0123456789"),
                            secrets.randbelow(900000) + 100000)

    files = {
        ".ssh/id_ed25519": edPriv,
        ".ssh/id_ed25519.pub": edPub,
        ".ssh/id_rsa": rsaPriv,
        ".ssh/id_rsa.pub": rsaPub,
        ".aws/credentials": "[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n" % (akid, secret),
        ".aws/config": "[default]\nregion = %s\noutput = json\n" % (region,),
        ".npmrc": "//registry.npmjs.org/:_authToken=%s\n" % (npmrcToken,),
        ".git-credentials": "https://%s:%s@github.com\n" % (user, gitCredToken),
        ".config/gh/hosts.yml": "github.com:\n    user: %s\n    oauth_token: %s\n    git_protocol: https\n"
        % (user, ghOauth),
        ".config/gcloud/application_default_credentials.json": json.dumps({
            "account": "",
            "client_id": GCLOUD_CLIENT_ID,
            "client_secret": GCLOUD_CLIENT_SECRET,
            "quota_project_id": project,
            "refresh_token": refresh,
            "type": "authorized_user",
            "universe_domain": "googleapis.com",
        }, indent=2) + "\n",
        ".kube/config": (
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: %s\n"
            "    server: https://%s.gr7.%s.eks.amazonaws.com\n  name: prod\ncontexts:\n- context:\n"
            "    cluster: prod\n    user: deployer\n  name: prod\ncurrent-context: prod\nkind: Config\n"
            "preferences: {}\nusers:\n- name: deployer\n  user:\n    token: %s\n"
        ) % (ca, cluster, region, kubeToken),
        ".docker/config.json": json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": dockerAuth}}},
                                          indent="\t") + "\n",
    }
    env = {
        "GITHUB_TOKEN": envGithub,
        "NPM_TOKEN": envNpmToken,
        "AWS_ACCESS_KEY_ID": envAkid,
        "AWS_SECRET_ACCESS_KEY": envSecret,
    }
    canaries = {
        "ssh_ed25519_key": keyMarker(edPriv),
        "ssh_rsa_key": keyMarker(rsaPriv),
        "aws_access_key_id": akid,
        "aws_secret_access_key": secret,
        "npm_token": npmrcToken,
        "git_credentials_token": gitCredToken,
        "gh_oauth_token": ghOauth,
        "gcloud_refresh_token": refresh,
        "kube_token": kubeToken.rsplit(".", 1)[1][:64],
        "docker_auth": dockerPat,
        "env_github_token": envGithub,
        "env_npm_token": envNpmToken,
        "env_aws_access_key_id": envAkid,
        "env_aws_secret_access_key": envSecret,
    }
    return Bait(files=files, env=env, canaries=canaries)
