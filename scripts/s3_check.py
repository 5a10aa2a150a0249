#!/usr/bin/env python3
"""Checks that an S3-compatible server does what the registry's S3 backend needs.

Standard library only: a small AWS Signature Version 4 signer (header and presigned
query auth) over http.client. Reads S3_ENDPOINT, S3_REGION, S3_BUCKET,
S3_ACCESS_KEY_ID and S3_SECRET_KEY (as `scripts/s3-server.sh start` prints them),
works under a fresh random key prefix, and prints one line per feature:

    ok NAME            works as the backend needs
    unsupported NAME   the server does not do it (said, not fatal unless required)
    FAIL NAME: WHY     broken: the exit status is 1

`--require-conditional-put` makes an ignored `If-None-Match: *` on PUT a failure.
`s3_check.py put KEY TEXT` and `s3_check.py get KEY` (the body on stdout, exit
status 1 unless 200) store and read one object, and `s3_check.py list PREFIX` prints
every key under a prefix, a line each, for a test's own checks.
Path-style addressing (http://host:port/bucket/key), since loopback has no DNS for
virtual-hosted buckets.
"""

import datetime
import hashlib
import hmac
import http.client
import os
import secrets
import sys
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


def quote(value, safe="-_.~"):
    return urllib.parse.quote(value, safe=safe)


class S3:
    def __init__(self, endpoint, region, bucket, access_key, secret_key):
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme != "http":
            raise SystemExit("s3_check.py: only http:// endpoints (loopback tests)")
        self.host = url.netloc
        self.region = region
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key

    def _signing_key(self, day):
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return key

    def _path(self, key):
        path = "/" + self.bucket
        if key is not None:
            path += "/" + quote(key, safe="-_.~/")
        return path

    @staticmethod
    def _canonical_query(params):
        return "&".join(
            f"{quote(k)}={quote(v)}" for k, v in sorted((k, str(v)) for k, v in params.items())
        )

    def _sign(self, method, path, query, headers, payload_hash, now):
        """Returns the signature and the signed header list for a canonical request."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        canon = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        signed = ";".join(sorted(canon))
        canonical = "\n".join(
            [
                method,
                path,
                query,
                "".join(f"{k}:{canon[k]}\n" for k in sorted(canon)),
                signed,
                payload_hash,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return signature, signed, scope

    def request(self, method, key=None, params=None, headers=None, body=b"", unsigned=False):
        params = params or {}
        headers = dict(headers or {})
        now = datetime.datetime.now(datetime.timezone.utc)
        payload_hash = UNSIGNED if unsigned else hashlib.sha256(body).hexdigest()
        headers["Host"] = self.host
        headers["x-amz-date"] = now.strftime("%Y%m%dT%H%M%SZ")
        headers["x-amz-content-sha256"] = payload_hash
        path = self._path(key)
        query = self._canonical_query(params)
        signature, signed, scope = self._sign(method, path, query, headers, payload_hash, now)
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        headers["Content-Length"] = str(len(body))
        return self._send(method, path + ("?" + query if query else ""), headers, body)

    def presign(self, method, key, expires=300):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        params = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{self.access_key}/{amz_date[:8]}/{self.region}/s3/aws4_request",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": "host",
        }
        path = self._path(key)
        query = self._canonical_query(params)
        signature, _, _ = self._sign(method, path, query, {"host": self.host}, UNSIGNED, now)
        return f"{path}?{query}&X-Amz-Signature={signature}"

    def _send(self, method, target, headers, body):
        conn = http.client.HTTPConnection(self.host, timeout=60)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def get_raw(self, target, headers=None):
        return self._send("GET", target, dict(headers or {}, Host=self.host), b"")


def strip_ns(root):
    for el in root.iter():
        if "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def xml(data):
    return strip_ns(ET.fromstring(data))


class Checker:
    def __init__(self, s3, prefix):
        self.s3 = s3
        self.prefix = prefix
        self.failed = False

    def ok(self, name, detail=""):
        print(f"ok {name}" + (f" ({detail})" if detail else ""), flush=True)

    def unsupported(self, name, detail):
        print(f"unsupported {name}: {detail}", flush=True)

    def fail(self, name, detail):
        print(f"FAIL {name}: {detail}", flush=True)
        self.failed = True

    def expect(self, name, cond, detail):
        if cond:
            return True
        self.fail(name, detail)
        return False

    # -- the checks -------------------------------------------------------------

    def objects(self):
        key = self.prefix + "object/a b+c"
        body = os.urandom(1000)
        st, h, data = self.s3.request("PUT", key, headers={"Content-Type": "application/octet-stream"}, body=body)
        if not self.expect("put-object", st == 200, f"PUT {st} {data[:300]!r}"):
            return
        etag = h.get("etag", "")
        self.ok("put-object", f"ETag {etag}")
        st, h, data = self.s3.request("GET", key)
        if self.expect("get-object", st == 200 and data == body, f"GET {st}, {len(data)} bytes"):
            self.ok("get-object")
        st, h, _ = self.s3.request("HEAD", key)
        if self.expect(
            "head-object",
            st == 200 and h.get("content-length") == str(len(body)) and h.get("etag") == etag,
            f"HEAD {st} {h}",
        ):
            self.ok("head-object")
        st, h, data = self.s3.request("GET", key, headers={"Range": "bytes=100-199"})
        if self.expect(
            "range-get",
            st == 206 and data == body[100:200] and h.get("content-range") == f"bytes 100-199/{len(body)}",
            f"GET Range {st} {h.get('content-range')} {len(data)} bytes",
        ):
            self.ok("range-get")
        st, h, data = self.s3.request("GET", key, headers={"If-None-Match": etag})
        if self.expect("conditional-get", st == 304, f"GET If-None-Match: ETag gave {st}"):
            self.ok("conditional-get", "304 on a matching ETag")
        # A body signed as UNSIGNED-PAYLOAD: what a streaming uploader sends.
        st, _, data = self.s3.request("PUT", key + ".unsigned", body=body, unsigned=True)
        if self.expect("unsigned-payload", st == 200, f"PUT {st} {data[:300]!r}"):
            self.ok("unsigned-payload")
        st, _, _ = self.s3.request("DELETE", key + ".unsigned")
        st, _, data = self.s3.request("DELETE", key)
        if self.expect("delete-object", st == 204, f"DELETE {st} {data[:300]!r}"):
            st, _, _ = self.s3.request("HEAD", key)
            if self.expect("delete-object", st == 404, f"HEAD after DELETE {st}"):
                self.ok("delete-object")
        st, _, data = self.s3.request("GET", key)
        if self.expect("no-such-key", st == 404 and b"NoSuchKey" in data, f"GET missing {st} {data[:300]!r}"):
            self.ok("no-such-key", "404 NoSuchKey")

    def listing(self):
        base = self.prefix + "list/"
        keys = [base + f"k{i}" for i in range(5)] + [base + "d1/x", base + "d1/y", base + "d2/z"]
        for key in keys:
            st, _, data = self.s3.request("PUT", key, body=key.encode())
            if not self.expect("list-objects-v2", st == 200, f"PUT {key} {st} {data[:200]!r}"):
                return
        got_keys, got_prefixes, pages, token = [], [], 0, None
        while True:
            params = {"list-type": "2", "prefix": base, "delimiter": "/", "max-keys": "2"}
            if token:
                params["continuation-token"] = token
            st, _, data = self.s3.request("GET", params=params)
            if not self.expect("list-objects-v2", st == 200, f"list {st} {data[:300]!r}"):
                return
            root = xml(data)
            pages += 1
            got_keys += [c.findtext("Key") for c in root.findall("Contents")]
            got_prefixes += [c.findtext("Prefix") for c in root.findall("CommonPrefixes")]
            truncated = root.findtext("IsTruncated") == "true"
            token = root.findtext("NextContinuationToken")
            if not truncated:
                break
            if not self.expect("list-objects-v2", token, "truncated page without NextContinuationToken"):
                return
            if pages > 20:
                self.fail("list-objects-v2", "more than 20 pages for 7 entries")
                return
        want_keys = sorted(k for k in keys if "/" not in k[len(base) :])
        want_prefixes = [base + "d1/", base + "d2/"]
        if self.expect(
            "list-objects-v2",
            sorted(got_keys) == want_keys and sorted(got_prefixes) == want_prefixes and pages >= 3,
            f"keys {got_keys} prefixes {got_prefixes} pages {pages}",
        ):
            self.ok("list-objects-v2", f"prefix, delimiter, max-keys=2: {pages} pages via continuation tokens")
        # start-after, without a delimiter
        st, _, data = self.s3.request(
            "GET", params={"list-type": "2", "prefix": base, "start-after": base + "k2"}
        )
        after = [c.findtext("Key") for c in xml(data).findall("Contents")] if st == 200 else []
        if self.expect("list-start-after", after == [base + "k3", base + "k4"], f"{st} {after}"):
            self.ok("list-start-after")
        for key in keys:
            self.s3.request("DELETE", key)

    def multipart(self):
        key = self.prefix + "multipart/blob"
        part1 = os.urandom(5 * 1024 * 1024)
        part2 = b"\x42"
        st, _, data = self.s3.request("POST", key, params={"uploads": ""})
        if not self.expect("multipart", st == 200, f"CreateMultipartUpload {st} {data[:300]!r}"):
            return
        upload_id = xml(data).findtext("UploadId")
        etags = []
        for number, part in ((1, part1), (2, part2)):
            st, h, data = self.s3.request(
                "PUT", key, params={"partNumber": str(number), "uploadId": upload_id}, body=part, unsigned=number == 1
            )
            if not self.expect("multipart", st == 200, f"UploadPart {number}: {st} {data[:300]!r}"):
                return
            etags.append(h.get("etag"))
        st, _, data = self.s3.request("GET", key, params={"uploadId": upload_id})
        parts = []
        if st == 200:
            parts = [(p.findtext("PartNumber"), p.findtext("Size")) for p in xml(data).findall("Part")]
        if self.expect(
            "multipart-list-parts", parts == [("1", str(len(part1))), ("2", "1")], f"ListParts {st} {parts}"
        ):
            self.ok("multipart-list-parts")
        st, _, data = self.s3.request("GET", params={"uploads": "", "prefix": self.prefix + "multipart/"})
        listed = [u.findtext("UploadId") for u in xml(data).findall("Upload")] if st == 200 else []
        if self.expect("multipart-list-uploads", upload_id in listed, f"ListMultipartUploads {st} {listed}"):
            self.ok("multipart-list-uploads")
        complete = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1)
        ) + "</CompleteMultipartUpload>"
        st, _, data = self.s3.request("POST", key, params={"uploadId": upload_id}, body=complete.encode())
        if not self.expect(
            "multipart", st == 200 and b"<Error" not in data, f"CompleteMultipartUpload {st} {data[:300]!r}"
        ):
            return
        st, h, data = self.s3.request("GET", key)
        whole = part1 + part2
        if self.expect(
            "multipart",
            st == 200 and hashlib.sha256(data).digest() == hashlib.sha256(whole).digest(),
            f"GET after complete {st}, {len(data)} bytes (want {len(whole)})",
        ):
            self.ok("multipart", f"5 MiB + 1 byte in 2 parts, ETag {h.get('etag')}")
        st, _, data = self.s3.request("GET", key, headers={"Range": f"bytes={len(part1) - 1}-"})
        if self.expect("range-get-multipart", st == 206 and data == whole[-2:], f"{st} {len(data)} bytes"):
            self.ok("range-get-multipart", "range across the part boundary")
        self.s3.request("DELETE", key)
        # Abort: the upload and its parts are gone.
        st, _, data = self.s3.request("POST", key + ".aborted", params={"uploads": ""})
        upload_id = xml(data).findtext("UploadId") if st == 200 else ""
        self.s3.request("PUT", key + ".aborted", params={"partNumber": "1", "uploadId": upload_id}, body=b"x" * 1024)
        st, _, data = self.s3.request("DELETE", key + ".aborted", params={"uploadId": upload_id})
        st2, _, data2 = self.s3.request("GET", key + ".aborted", params={"uploadId": upload_id})
        if self.expect(
            "multipart-abort", st == 204 and st2 == 404 and b"NoSuchUpload" in data2, f"abort {st}, list after {st2}"
        ):
            self.ok("multipart-abort", "ListParts afterwards: 404 NoSuchUpload")

    def conditional_put(self, required):
        key = self.prefix + "conditional/once"
        st1, _, data1 = self.s3.request("PUT", key, headers={"If-None-Match": "*"}, body=b"first")
        if not self.expect("conditional-put", st1 == 200, f"first PUT If-None-Match: * gave {st1} {data1[:300]!r}"):
            return
        st2, _, data2 = self.s3.request("PUT", key, headers={"If-None-Match": "*"}, body=b"second")
        _, _, now = self.s3.request("GET", key)
        if st2 == 412 and now == b"first":
            self.ok("conditional-put", "second PUT with If-None-Match: * refused with 412")
        elif st2 == 200 and now == b"second":
            detail = "If-None-Match: * on PUT is ignored: the second PUT returned 200 and overwrote the object"
            (self.fail if required else self.unsupported)("conditional-put", detail)
        else:
            self.fail("conditional-put", f"second PUT gave {st2} {data2[:300]!r}, object now {now!r}")
        self.s3.request("DELETE", key)

    def presigned(self):
        key = self.prefix + "presigned/obj"
        body = os.urandom(4096)
        self.s3.request("PUT", key, body=body)
        st, _, data = self.s3.get_raw(self.s3.presign("GET", key))
        if self.expect("presigned-get", st == 200 and data == body, f"presigned GET {st} {data[:300]!r}"):
            self.ok("presigned-get", "SigV4 query auth, X-Amz-Expires=300")
        st, _, data = self.s3.get_raw(self.s3.presign("GET", key)[:-4] + "0000")
        if self.expect("presigned-get-bad-signature", st == 403, f"tampered signature gave {st}"):
            self.ok("presigned-get-bad-signature", "403")
        self.s3.request("DELETE", key)

    def bad_auth(self):
        wrong = S3("http://" + self.s3.host, self.s3.region, self.s3.bucket, self.s3.access_key, "0" * 64)
        st, _, _ = wrong.request("GET", params={"list-type": "2", "max-keys": "1"})
        if self.expect("signature-checked", st == 403, f"wrong secret gave {st}"):
            self.ok("signature-checked", "wrong secret: 403")
        other = "us-west-2" if self.s3.region != "us-west-2" else "eu-west-1"
        wrong = S3("http://" + self.s3.host, other, self.s3.bucket, self.s3.access_key, self.s3.secret_key)
        st, _, data = wrong.request("GET", params={"list-type": "2", "max-keys": "1"})
        if st == 200:
            self.ok("region", f"a request signed for {other} is accepted too")
        else:
            self.ok("region", f"only {self.s3.region} is accepted: {other} gave {st}")


def main():
    args = sys.argv[1:]
    required = "--require-conditional-put" in args
    env = {}
    for name in ("S3_ENDPOINT", "S3_REGION", "S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_KEY"):
        if not os.environ.get(name):
            raise SystemExit(f"s3_check.py: {name} is not set (eval \"$(scripts/s3-server.sh start DIR)\")")
        env[name] = os.environ[name]
    s3 = S3(env["S3_ENDPOINT"], env["S3_REGION"], env["S3_BUCKET"], env["S3_ACCESS_KEY_ID"], env["S3_SECRET_KEY"])
    if args[:1] == ["put"] and len(args) == 3:
        st, _, data = s3.request("PUT", args[1], body=args[2].encode())
        print(st, data.decode(errors="replace"), file=sys.stderr if st != 200 else sys.stdout)
        return 0 if st == 200 else 1
    if args[:1] == ["get"] and len(args) == 2:
        st, _, data = s3.request("GET", args[1])
        if st != 200:
            print(st, data.decode(errors="replace"), file=sys.stderr)
            return 1
        sys.stdout.buffer.write(data)
        return 0
    if args[:1] == ["list"] and len(args) == 2:
        # Every key under a prefix, a line each (the tests look into the bucket).
        token = None
        while True:
            params = {"list-type": "2", "prefix": args[1]}
            if token:
                params["continuation-token"] = token
            st, _, data = s3.request("GET", params=params)
            if st != 200:
                print(st, data.decode(errors="replace"), file=sys.stderr)
                return 1
            root = xml(data)
            for contents in root.findall("Contents"):
                print(contents.findtext("Key"))
            token = root.findtext("NextContinuationToken")
            if root.findtext("IsTruncated") != "true":
                return 0
    checker = Checker(s3, f"s3-check-{secrets.token_hex(4)}/")
    checker.objects()
    checker.listing()
    checker.multipart()
    checker.conditional_put(required)
    checker.presigned()
    checker.bad_auth()
    if checker.failed:
        print("s3_check.py: FAILED", flush=True)
        return 1
    print("s3_check.py: all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
