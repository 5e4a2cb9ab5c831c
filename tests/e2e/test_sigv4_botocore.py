"""The filter's SigV4 code (through the test tool examples/sigv4_sign.rs, which the fixture
builds) against botocore's S3 signer, an independent implementation, on randomized object keys,
query strings, headers, payloads, dates, regions and credentials. Keys reach the filter in
another (equivalent) percent-encoding than the one botocore signs, as clients send them: the
filter must re-encode them the S3 way.
Seeded (ORIGIN_PULL_SIGV4_SEED overrides) so a failure can be replayed."""

import hashlib
import json
import os
import random
import subprocess
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from envoy_config import REPO

SIGNER = REPO / "target" / "release" / "examples" / "sigv4_sign"
CASES = 400
KEY_CHARS = ("abcXYZ019-_.~/ !$&'()*+,;=:@%#[]{}|^`\"<>\\"
             + "éü中文ሴ😀\u00a0")
VALUE_CHARS = "abcXYZ019-_.~ !$&'()*+,;=:@/?%\"<>"


def rand_text(rng, alphabet, lo, hi):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def client_form(rng, key):
    """An equivalent percent-encoding of the key, as a client might send it: unreserved and
    sub-delims sometimes raw, hex digits sometimes lower-case."""
    out = []
    for ch in key:
        if ch.isascii() and (ch.isalnum() or ch in "-_.~/") and rng.random() < 0.7:
            out.append(ch)
        elif ch.isascii() and ch in "!$&'()*+,;=:@" and rng.random() < 0.5:
            out.append(ch)
        else:
            enc = quote(ch, safe="")
            out.append(enc.lower() if enc.startswith("%") and rng.random() < 0.3 else enc)
    return "".join(out)


def make_case(rng):
    key = rand_text(rng, KEY_CHARS, 1, 24).lstrip("/") or "k"
    path = "/" + key
    params = [(rand_text(rng, VALUE_CHARS, 1, 8), rand_text(rng, VALUE_CHARS, 0, 8))
              for _ in range(rng.randint(0, 4))]
    if params and rng.random() < 0.3:
        params.append((params[0][0], rand_text(rng, VALUE_CHARS, 0, 4)))  # repeated name
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)
    host = rng.choice(["bkt.s3.amazonaws.com", "s3.test:9000", "b-1.oss-cn-hangzhou.aliyuncs.com"])
    headers = [("host", host)]
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(["x-amz-meta-a", "range", "content-type", "x-custom", "if-none-match"])
        value = "  ".join(rand_text(rng, "abcXYZ019-_.;=/,\"", 1, 6)
                          for _ in range(rng.randint(1, 3)))
        headers.append((name, (" " if rng.random() < 0.3 else "") + value))
    when = rng.randint(946_684_800, 4_102_444_799)
    amz_date = __import__("time").strftime("%Y%m%dT%H%M%SZ", __import__("time").gmtime(when))
    payload = hashlib.sha256(rng.randbytes(rng.randint(0, 64))).hexdigest() \
        if rng.random() < 0.5 else "UNSIGNED-PAYLOAD"
    headers += [("x-amz-date", amz_date), ("x-amz-content-sha256", payload)]
    return {
        "method": rng.choice(["GET", "HEAD", "PUT"]),
        "aws_path": quote(path, safe="/~"),
        "path": client_form(rng, path),
        "query": query,
        "headers": headers,
        "payload_sha256": payload,
        "amz_date": amz_date,
        "access_key_id": "AKIA" + rand_text(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 16),
        "secret": rand_text(rng, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789+/", 40, 40),
        "region": rng.choice(["us-east-1", "eu-west-3", "oss-cn-hangzhou", "auto", "ap-guangzhou"]),
        "service": "s3",
    }


def botocore_sign(case):
    url = f"https://{case['headers'][0][1]}{case['aws_path']}"
    if case["query"]:
        url += "?" + case["query"]
    request = AWSRequest(method=case["method"], url=url)
    for name, value in case["headers"]:
        request.headers[name] = value  # assignment appends: repeats are kept
    request.context["timestamp"] = case["amz_date"]
    auth = S3SigV4Auth(Credentials(case["access_key_id"], case["secret"]), "s3", case["region"])
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    return canonical, signature


@pytest.fixture(scope="module")
def signer():
    # A dev-only example, not part of `make build`: built here (a no-op when up to date).
    subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "sigv4_sign"],
                   cwd=REPO, check=True, timeout=900)
    return SIGNER


def test_randomized_requests_match_botocore(signer):
    seed = int(os.environ.get("ORIGIN_PULL_SIGV4_SEED", "20240524"))
    rng = random.Random(seed)
    cases = [make_case(rng) for _ in range(CASES)]
    lines = "".join(json.dumps({k: v for k, v in c.items() if k != "aws_path"}) + "\n"
                    for c in cases)
    out = subprocess.run([str(signer)], input=lines, capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert len(out) == CASES
    with_query = sum(1 for c in cases if c["query"])
    repeated = sum(1 for c in cases if len({h for h, _ in c["headers"]}) < len(c["headers"]))
    assert with_query > CASES // 2 and repeated > 10, (with_query, repeated)
    for case, line in zip(cases, out):
        ours = json.loads(line)
        canonical, signature = botocore_sign(case)
        assert ours["canonical_request"] == canonical, f"seed {seed}: {case}"
        assert ours["authorization"].endswith("Signature=" + signature), f"seed {seed}: {case}"
        assert case["secret"] not in line


def test_a_wrong_secret_changes_the_signature(signer):
    """Guards the comparison itself: botocore with another secret must disagree."""
    case = make_case(random.Random(1))
    line = subprocess.run([str(signer)], input=json.dumps(case) + "\n",
                          capture_output=True, text=True, timeout=30, check=True).stdout
    _, right = botocore_sign(case)
    _, wrong = botocore_sign(dict(case, secret=case["secret"][:-1] + "x"))
    assert json.loads(line)["authorization"].endswith(right) and right != wrong
