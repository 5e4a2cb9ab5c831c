"""A real S3-compatible server for the bucket end-to-end tests: moto's server mode (PyPI `moto`,
installed into .venv by `make venv`), bound to the issue-4 loopback range 127.0.4.x.

moto verifies AWS Signature V4 through its IAM emulation once authentication is switched on: the
harness creates an IAM user, an access key and a policy, the buckets and objects while moto still
accepts everything, then POSTs /moto-api/reset-auth with 0 so that every later request must carry
a valid signature of a known access key (a wrong secret gets 403 SignatureDoesNotMatch).

    s3 = S3Server(tmp_path / "s3").start()
    key_id, secret = s3.make_user("edge")
    s3.make_bucket("private-bkt", {"media/a.jpg": b"..."})
    s3.require_auth()
    s3.get_object("private-bkt", "media/a.jpg", key_id, secret)  # signed by botocore
"""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

REGION = "us-east-1"


class S3Server:
    def __init__(self, directory, ip="127.0.4.2", port=None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ip = ip
        self.port = port or harness.free_port(ip)
        self.proc = None
        self.log_path = self.dir / "moto.log"

    @property
    def addr(self):
        return f"{self.ip}:{self.port}"

    @property
    def url(self):
        return f"http://{self.addr}"

    def start(self, timeout=60.0):
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # open until require_auth()
        env.update({"AWS_DEFAULT_REGION": REGION, "MOTO_ALLOW_NONEXISTENT_REGION": "true"})
        out = open(self.log_path, "ab")
        self.proc = harness._spawn(
            [sys.executable, "-m", "moto.server", "-H", self.ip, "-p", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        out.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self.proc.returncode}:\n{self.log_tail()}")
            return harness.port_open(self.ip, self.port)
        harness.wait_for(up, timeout, what=f"moto S3 server on {self.addr}")
        RECENT.append(self)
        return self

    def stop(self):
        harness._stop_proc(self.proc, 3)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def log_tail(self, n=40):
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    # ------------------------------------------------------------------ clients
    def client(self, service="s3", key_id="open", secret="open"):
        import boto3
        from botocore.config import Config

        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=5, read_timeout=10))

    def make_user(self, name):
        """IAM user allowed s3:* -> (access key id, secret). Call before require_auth()."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="s3-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def make_bucket(self, bucket, objects=None, public=False):
        s3 = self.client()
        s3.create_bucket(Bucket=bucket)
        if public:
            s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                               "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
        for key, body in (objects or {}).items():
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")

    def require_auth(self):
        """From now on every request needs a valid SigV4 signature of a known access key."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200, r.status

    def get_object(self, bucket, key, key_id, secret):
        """(status, body) of a GetObject signed by botocore with the given credentials."""
        from botocore.exceptions import ClientError

        try:
            r = self.client(key_id=key_id, secret=secret).get_object(Bucket=bucket, Key=key)
            return 200, r["Body"].read()
        except ClientError as e:
            return int(e.response["ResponseMetadata"]["HTTPStatusCode"]), e.response["Error"]

    def requests(self):
        """(method, path) of the requests moto logged (werkzeug access log), oldest first."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # werkzeug colours its log
            start = line.find('"')
            end = line.find('"', start + 1)
            if start < 0 or end < 0:
                continue
            parts = line[start + 1:end].split(" ")
            if len(parts) == 3 and parts[2].startswith("HTTP/"):
                out.append((parts[0], parts[1]))
        return out


# Servers started during the current test (their logs are added to a failure report).
RECENT = []
