#!/usr/bin/env python3
"""Small reader of the coordinator's HTTP API, for the zfs-vm guest scripts.

    api.py PORT get PATH                 print the body (exit 1 if not 200)
    api.py PORT ready NODE...            exit 0 when /readyz is 200 and every NODE
                                         is in /api/v1/fleet with an inventory
    api.py PORT has-snap NODE DATASET SNAP   exit 0 when the coordinator's inventory of
                                         NODE lists DATASET@SNAP
    api.py PORT paired TASK SRCNODE DS   print "TARGET_NODE TARGET_DATASET" of the pairing, exit 1 if none
    api.py PORT jobs [DATASET]           one line per job (of DATASET), oldest first:
                                         id state attempt resumed bytes started_ms finished_ms error
    api.py PORT job ID|DATASET           the job's JSON record (by job id, or the newest
                                         job of a source dataset), pretty-printed
    api.py PORT field DATASET NAME       one field of the newest job of DATASET
                                         (lists one item a line; exit 1 if no job)
    api.py PORT post PATH JSON           POST JSON with the token in $ZDR_TOKEN_FILE: prints
                                         the status code, then the body on one line
                                         (exit 1 if no answer)
    api.py PORT value PATH|- KEY         the value at KEY (dotted; `*` maps over a list,
                                         e.g. copies.1.snapshots.*.guid) of GET PATH's
                                         body, or of the JSON on stdin with `-`; lists
                                         one item a line (exit 1 if not 200 or no KEY)
    api.py PORT drill JOB KEY...         the value at KEY (as for value) of drill JOB in
                                         GET /api/v1/drills (exit 1 if no such drill or KEY);
                                         with several KEYs one line each, "-" if missing

Only the standard library; every request times out after 10 s. Field names
follow coordinator/src/jobs.rs; missing fields print as "-".
"""
import json
import os
import sys
import urllib.error
import urllib.request


def get(port, path, body=None):
    """GET PATH, or POST the JSON `body` to it: (status, body text)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if body is not None:
        req.data = body.encode()
        req.add_header("content-type", "application/json")
        # A POST needs the API token (the coordinator's --api-token-file).
        token_file = os.environ.get("ZDR_TOKEN_FILE")
        if token_file:
            with open(token_file) as f:
                req.add_header("authorization", "Bearer " + f.read().strip())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None, ""


def get_json(port, path):
    code, body = get(port, path)
    if code != 200:
        sys.exit(1)
    return json.loads(body)


def pick(v, keys):
    """The values at the dotted path `keys` (a list); `*` maps over a list."""
    if not keys:
        return [v]
    k, rest = keys[0], keys[1:]
    if k == "*" and isinstance(v, list):
        return [x for item in v for x in pick(item, rest)]
    if isinstance(v, list) and k.isdigit() and int(k) < len(v):
        return pick(v[int(k)], rest)
    if isinstance(v, dict) and k in v:
        return pick(v[k], rest)
    raise KeyError(k)


def show(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    if x is None:
        return "-"
    if isinstance(x, (dict, list)):
        return json.dumps(x, sort_keys=True)
    return str(x)


def field(job, *names):
    for n in names:
        if n in job and job[n] is not None:
            v = job[n]
            if isinstance(v, bool):
                return "true" if v else "false"
            return str(v).replace("\n", " ")
    return "-"


def jobs_of(port, dataset=None):
    v = get_json(port, "/api/v1/jobs")
    jobs = v.get("jobs", v) if isinstance(v, dict) else v
    out = [j for j in jobs if dataset is None or j.get("dataset") == dataset]
    out.sort(key=lambda j: (j.get("started_at_ms") or 0, str(j.get("id"))))
    return out


def main():
    port, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "get":
        code, body = get(port, args[0])
        print(body)
        sys.exit(0 if code == 200 else 1)
    if cmd == "post":
        code, body = get(port, args[0], args[1])
        if code is None:
            sys.exit(1)
        print(code)
        print(body.replace("\n", " "))
        sys.exit(0)
    if cmd == "value":
        v = json.load(sys.stdin) if args[0] == "-" else get_json(port, args[0])
        try:
            found = pick(v, args[1].split("."))
        except KeyError:
            sys.exit(1)
        if len(found) == 1 and isinstance(found[0], list):
            found = found[0]
        for x in found:
            print(show(x))
        sys.exit(0)
    if cmd == "drill":
        drills = get_json(port, "/api/v1/drills").get("drills", [])
        found = [d for d in drills if d.get("job") == args[0]]
        if not found:
            sys.exit(1)
        if len(args) > 2:
            # Several keys: one line each, "-" where missing.
            for key in args[1:]:
                try:
                    vals = pick(found[0], key.split("."))
                except KeyError:
                    vals = [None]
                print(show(vals[0] if len(vals) == 1 else vals).replace("\n", " "))
            sys.exit(0)
        try:
            found = pick(found[0], args[1].split("."))
        except KeyError:
            sys.exit(1)
        if len(found) == 1 and isinstance(found[0], list):
            found = found[0]
        for x in found:
            print(show(x))
        sys.exit(0)
    if cmd == "ready":
        code, _ = get(port, "/readyz")
        if code != 200:
            sys.exit(1)
        fleet = get_json(port, "/api/v1/fleet")
        nodes = {n.get("node"): n for n in fleet.get("nodes", [])}
        for want in args:
            n = nodes.get(want)
            if not n or not n.get("datasets"):
                sys.exit(1)
        sys.exit(0)
    if cmd == "has-snap":
        node, ds, snap = args
        fleet = get_json(port, "/api/v1/fleet")
        for n in fleet.get("nodes", []):
            if n.get("node") != node:
                continue
            for d in n.get("datasets") or []:
                if d.get("name") == ds or d.get("dataset") == ds:
                    names = [x.get("name") if isinstance(x, dict) else x for x in d.get("snapshots") or []]
                    sys.exit(0 if snap in names else 1)
        sys.exit(1)
    if cmd == "paired":
        task, node, ds = args
        v = get_json(port, "/api/v1/pairings")
        for p in v.get("pairings", []):
            if p.get("task") == task and p.get("source_node") == node and p.get("dataset") == ds:
                print(p.get("target_node"), p.get("target_dataset"))
                sys.exit(0)
        sys.exit(1)
    if cmd == "jobs":
        for j in jobs_of(port, args[0] if args else None):
            print(" ".join([
                field(j, "id"), field(j, "state"), field(j, "attempt"), field(j, "resumed"),
                field(j, "bytes"), field(j, "started_at_ms"), field(j, "finished_at_ms"),
                field(j, "error"),
            ]))
        sys.exit(0)
    if cmd in ("job", "field"):
        v = get_json(port, "/api/v1/jobs")
        jobs = v.get("jobs", v) if isinstance(v, dict) else v
        want = args[0]
        found = [j for j in jobs if str(j.get("id")) == want or j.get("dataset") == want]
        if not found:
            sys.exit(1)
        found.sort(key=lambda j: j.get("started_at_ms") or 0)
        j = found[-1]
        if cmd == "job":
            print(json.dumps(j, indent=1, sort_keys=True))
        else:
            x = j.get(args[1])
            if isinstance(x, list):
                for item in x:
                    print(item)
            elif isinstance(x, bool):
                print("true" if x else "false")
            elif x is None:
                print("-")
            else:
                print(x)
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
