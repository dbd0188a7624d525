set -e
cd /work/main
for round in 1 2 3; do
  for arm in on off; do
    if [ $arm = on ]; then export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1; else unset RAY_TRAIN_ENABLE_PREEMPTION_WATCHER; fi
    echo "$(date -u +%T) round $round arm $arm load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/probe/ab/order.log
    CADC_DATA_DIR=../shared/data .venv/bin/python scripts/bench_cluster_placement.py --placements one_group --repeats 2 --set resources.num_workers=2 --output /tmp/probe/ab/${arm}_${round}.json > /tmp/probe/ab/${arm}_${round}.log 2>&1
    echo "$(date -u +%T) watcher logs: $(grep -l PreemptionWatcher $(readlink -f /tmp/ray/session_latest)/logs/worker-*.out 2>/dev/null | wc -l)" >> /tmp/probe/ab/order.log
  done
done
echo done >> /tmp/probe/ab/order.log
