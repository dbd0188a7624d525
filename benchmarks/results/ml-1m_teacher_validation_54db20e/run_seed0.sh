#!/bin/bash
cd /tmp/snapC
for side in plain validated; do
  echo "$(date -u +%H:%M:%S) $side load $(cut -d' ' -f1-3 /proc/loadavg)" >> /tmp/ml1m_teacher/order.log
  extra=""
  if [ $side = validated ]; then extra="--set pretrain.eval_every=5 --set pretrain.early_stopping_patience=3"; fi
  PYTHONPATH=/tmp/snapC CADC_DATA_DIR=/work/shared/data /work/main/.venv/bin/python -m cadc_ray.run configs/ml-1m.yaml --set pretrain.epochs=100 $extra --output /tmp/ml1m_teacher/$side > /tmp/ml1m_teacher/$side.log 2>&1
done
echo "$(date -u +%H:%M:%S) done" >> /tmp/ml1m_teacher/order.log
