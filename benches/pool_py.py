#!/usr/bin/env python3
"""Python's multiprocessing.Pool side of `cargo bench --bench pool`.

Usage: pool_py.py FIGURE N [WORKERS]. Prints one line of JSON with the figure's measurements;
benches/pool.rs runs it once per figure and round, interleaved with warden's own runs. The pool
is started (and warmed up) before the clock starts, as on the warden side.

Figures (job: x + 1, or an echo of 64 KiB of bytes):
  one    one job in flight: pool.apply in a loop; jobs/s, median and p99 round trip (µs)
  many   all in flight: apply_async with a callback, then wait for the last one
  imap   imap_unordered with chunksize 1
  map    map with its default chunking (ceil(len / (4 * workers)))
  bytes  64 KiB payload echoed, one in flight
  mixed  one 1.5 s job, then N 20 ms jobs (apply_async); jobs/s over the wall time
  burst  N 0.5 s jobs submitted as the pool is created; jobs/s from Pool() to the last result
"""

import json
import multiprocessing as mp
import sys
import threading
import time


def inc(x):
    return x + 1


def echo(b):
    return b


def sleep_ms(ms):
    time.sleep(ms / 1000)
    return ms


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def main():
    figure, n = sys.argv[1], int(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    if figure == "burst":
        t0 = time.perf_counter()
        with mp.Pool(workers) as pool:
            rs = [pool.apply_async(sleep_ms, (500,)) for _ in range(n)]
            for r in rs:
                r.get()
            el = time.perf_counter() - t0
        print(json.dumps({"figure": figure, "n": n, "rate": n / el}), flush=True)
        return
    with mp.Pool(workers) as pool:
        pool.map(inc, range(1000))  # warm up: workers started and importing done
        out = {"figure": figure, "n": n}
        if figure == "one":
            lat = []
            t0 = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                assert pool.apply(inc, (i,)) == i + 1
                lat.append(time.perf_counter() - t)
            el = time.perf_counter() - t0
            out.update(rate=n / el, p50_us=pct(lat, 0.5) * 1e6, p99_us=pct(lat, 0.99) * 1e6)
        elif figure == "many":
            done = threading.Event()
            left = [n]
            lock = threading.Lock()

            def cb(_):
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()

            t0 = time.perf_counter()
            for i in range(n):
                pool.apply_async(inc, (i,), callback=cb)
            done.wait()
            out.update(rate=n / (time.perf_counter() - t0))
        elif figure == "imap":
            t0 = time.perf_counter()
            count = sum(1 for _ in pool.imap_unordered(inc, range(n), chunksize=1))
            assert count == n
            out.update(rate=n / (time.perf_counter() - t0))
        elif figure == "map":
            t0 = time.perf_counter()
            r = pool.map(inc, range(n))
            el = time.perf_counter() - t0
            assert r[-1] == n
            out.update(rate=n / el)
        elif figure == "mixed":
            t0 = time.perf_counter()
            rs = [pool.apply_async(sleep_ms, (1500,))]
            rs += [pool.apply_async(sleep_ms, (20,)) for _ in range(n)]
            for r in rs:
                r.get()
            out.update(rate=(n + 1) / (time.perf_counter() - t0))
        elif figure == "bytes":
            payload = bytes(range(256)) * 256  # 64 KiB
            t0 = time.perf_counter()
            for _ in range(n):
                assert len(pool.apply(echo, (payload,))) == len(payload)
            out.update(rate=n / (time.perf_counter() - t0))
        else:
            sys.exit(f"unknown figure {figure}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
