"""Bus overhead: imgline's harness against raw pika, measured in the same run on one broker.

Prints, for the same small message:
- per-hop latency (publish -> handler entered), median of N sequential round trips, for raw
  pika (basic_publish, basic_consume, ack) and for imgline (validated publish with confirms ->
  Consumer -> schema validation -> typed handler); the ratio is the harness overhead;
- throughput through one consumer with schema validation (queue preloaded, default prefetch),
  next to raw pika consuming the same preload with prefetch 1 and per-message acks.
Targets (issue 2): latency ratio <= 2.0, imgline throughput >= 500 msg/s.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from contextlib import closing

import pika

from imgline.core.broker import broker_access
from imgline.core.bus import Consumer, Publisher, topology
from imgline.core.config import BusSettings
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1


def sample_message(i: int) -> BuildRequestedV1:
    req = p.BuildRequested(
        request_id=f"bench-{i}",
        source=p.GitSource(
            url="https://git.example.com/node.git", ref="main", kickstart_path="examples/node.ks"
        ),
        name="node",
    )
    return BuildRequestedV1.from_payload(req)  # type: ignore[return-value]


def raw_latency(url: str, n: int) -> list[float]:
    queue = f"bench.raw.{uuid.uuid4().hex[:6]}"
    body = sample_message(0)._encoded_body
    got = threading.Event()
    t_recv = [0.0]
    ready = threading.Event()

    def consume() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.basic_qos(prefetch_count=1)

        def on_msg(chan, method, _props, _body):  # type: ignore[no-untyped-def]
            t_recv[0] = time.perf_counter()
            got.set()
            chan.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_msg)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)
        conn.close()

    stop = threading.Event()
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    ready.wait(30)
    pub = pika.BlockingConnection(pika.URLParameters(url))
    ch = pub.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    samples = []
    for _ in range(n):
        got.clear()
        t0 = time.perf_counter()
        ch.basic_publish("", queue, body, props)
        got.wait(10)
        samples.append(t_recv[0] - t0)
    stop.set()
    thread.join(10)
    ch.queue_delete(queue)
    pub.close()
    return samples


def imgline_latency(url: str, n: int) -> list[float]:
    s = BusSettings(service=f"bench{uuid.uuid4().hex[:6]}", exchange="bench")
    with closing(pika.BlockingConnection(pika.URLParameters(url))) as conn:
        topology.declare(conn.channel(), topology.shared_topology(s))
    got = threading.Event()
    t_recv = [0.0]

    def handle(_msg: BuildRequestedV1) -> None:
        t_recv[0] = time.perf_counter()
        got.set()

    consumer = Consumer(s, url)
    consumer.on(BuildRequestedV1, handle)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    consumer.ready.wait(30)
    samples = []
    with Publisher(s, url) as pub:
        for i in range(n):
            msg = sample_message(i)
            got.clear()
            t0 = time.perf_counter()
            pub.publish(msg)
            got.wait(10)
            samples.append(t_recv[0] - t0)
    consumer.stop()
    thread.join(30)
    _delete(url, s.queue_name)
    return samples


def _delete(url: str, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().queue_delete(queue)
    conn.close()


def raw_throughput(url: str, n: int) -> float:
    queue = f"bench.rawtp.{uuid.uuid4().hex[:6]}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    body = sample_message(0)._encoded_body
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for _ in range(n):
        ch.basic_publish("", queue, body, props)
    ch.basic_qos(prefetch_count=1)
    count = [0]

    def on_msg(chan, method, _props, _body):  # type: ignore[no-untyped-def]
        count[0] += 1
        chan.basic_ack(method.delivery_tag)
        if count[0] == n:
            chan.stop_consuming()

    ch.basic_consume(queue, on_msg)
    t0 = time.perf_counter()
    ch.start_consuming()
    elapsed = time.perf_counter() - t0
    ch.queue_delete(queue)
    conn.close()
    return n / elapsed


def imgline_throughput(url: str, n: int, prefetch: int) -> float:
    s = BusSettings(service=f"benchtp{uuid.uuid4().hex[:6]}", exchange="bench", prefetch=prefetch)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    topology.declare(conn.channel(), topology.shared_topology(s))
    topology.declare(conn.channel(), topology.service_topology(s, ("build.requested",)))
    conn.close()
    with Publisher(s, url) as pub:
        for i in range(n):
            pub.publish(sample_message(i))
    done = threading.Event()
    count = [0]
    lock = threading.Lock()

    def handle(_msg: BuildRequestedV1) -> None:
        with lock:
            count[0] += 1
            if count[0] == n:
                done.set()

    consumer = Consumer(s, url)
    consumer.on(BuildRequestedV1, handle)
    thread = threading.Thread(target=consumer.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    done.wait(300)
    elapsed = time.perf_counter() - t0
    consumer.stop()
    thread.join(30)
    _delete(url, s.queue_name)
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency-n", type=int, default=300)
    ap.add_argument("--throughput-n", type=int, default=3000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    logging.getLogger("imgline").setLevel(logging.WARNING)
    with broker_access() as broker:
        url = broker.admin_url
        raw_latency(url, 20)  # warm up the broker and the code paths
        imgline_latency(url, 20)
        raw = statistics.median(raw_latency(url, args.latency_n))
        ours = statistics.median(imgline_latency(url, args.latency_n))
        raw_tp = raw_throughput(url, args.throughput_n)
        tp1 = imgline_throughput(url, args.throughput_n, prefetch=1)
        tp10 = imgline_throughput(url, args.throughput_n, prefetch=10)
    ratio = ours / raw
    print(f"per-hop latency, median of {args.latency_n}:")
    print(f"  raw pika        {raw * 1000:8.3f} ms")
    print(f"  imgline         {ours * 1000:8.3f} ms")
    print(f"  ratio           {ratio:8.2f}x   (target <= 2.00)  {'OK' if ratio <= 2 else 'MISSED'}")
    print(f"throughput, {args.throughput_n} preloaded messages, one consumer:")
    print(f"  raw pika (prefetch 1)               {raw_tp:8.0f} msg/s")
    print(
        f"  imgline  (prefetch 1, validated)    {tp1:8.0f} msg/s   (target >= 500)  "
        f"{'OK' if tp1 >= 500 else 'MISSED'}  ratio to raw {tp1 / raw_tp:.2f}"
    )
    print(f"  imgline  (prefetch 10, validated)   {tp10:8.0f} msg/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
