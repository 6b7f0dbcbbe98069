"""Soak a manager server: 8 clients at full speed for N seconds, sampling the
server's RSS and thread count from /proc every second.

    python tools/soak.py                     # 60 s
    python tools/soak.py --seconds 600       # the long variant
    python tools/soak.py --csv soak.csv --png soak.png

Writes the samples as CSV (t, rss_kb, threads, fds) and, if matplotlib is
installed, a plot.  Exits 1 if, after the first third (warm-up), the RSS
grows by more than --max-growth-kb between the two halves or the thread
count moves by more than --max-thread-change.  The plots of the last runs
are in docs/performance.md.
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import reliability as H  # noqa: E402


def plot(samples, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    t = [s[0] for s in samples]
    fig, ax1 = plt.subplots(figsize=(8, 4))
    ax1.plot(t, [s[1] / 1024 for s in samples], color="tab:blue", label="RSS (MiB)")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("server RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(t, [s[2] for s in samples], color="tab:red", label="threads")
    ax2.set_ylabel("server threads", color="tab:red")
    ax2.set_ylim(bottom=0, top=max(s[2] for s in samples) * 1.5 + 1)
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--csv", default="soak.csv")
    parser.add_argument("--png", default="soak.png")
    parser.add_argument("--max-growth-kb", type=int, default=8 * 1024)
    parser.add_argument("--max-thread-change", type=int, default=4)
    args = parser.parse_args(argv)

    srv = H.ServerProcess()
    try:
        print("server pid %d at %r; %d clients for %g s" % (srv.pid, srv.address, args.clients,
                                                           args.seconds))
        samples = H.soak(srv.address, srv.pid, args.seconds, clients=args.clients,
                         interval=args.interval,
                         on_sample=lambda s: print("t=%6.1f  rss=%7d kB  threads=%3d  fds=%4d"
                                                   % s, flush=True))
    finally:
        srv.stop()
    with open(args.csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t", "rss_kb", "threads", "fds"])
        writer.writerows(samples)
    print("wrote %s" % args.csv)
    if plot(samples, args.png, "fastmgr server, %d clients, %g s" % (args.clients, args.seconds)):
        print("wrote %s" % args.png)

    warm = samples[len(samples) // 3:]
    half = len(warm) // 2
    rss = [s[1] for s in warm]
    threads = [s[2] for s in warm]
    growth = max(rss[half:]) - max(rss[:half])
    print("after warm-up: rss %d..%d kB (growth between halves %d kB), threads %d..%d"
          % (min(rss), max(rss), growth, min(threads), max(threads)))
    ok = growth < args.max_growth_kb and max(threads) - min(threads) <= args.max_thread_change
    print("flat" if ok else "NOT FLAT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
