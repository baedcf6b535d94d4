#!/bin/bash
# The GRPO stage's GPU code paths in one go (a check, not a measurement): the accelerate launch entry point, the
# prompt pre-filter (the factory's vLLM engine in a fresh process, then closed) and TRL's colocated vLLM rollouts
# (use_vllm auto), 2 steps with checkpoints, rollouts and counts, on a tiny random Qwen2 body.
#   TOK=TOKENIZER_DIR W=/tmp/gc bash bench/grpo_gpu_check.sh
set -e
TOK=${TOK:-/tmp/tok}; W=${W:-/tmp/gc}; rm -rf $W; mkdir -p $W
python3 bench/generate_gpu.py --shape tiny --workload 1:1:64 --tokenizer $TOK --build $W/tinyq > /dev/null
cat > $W/gc.yaml <<YAML
name: gpu-check
stages: [grpo]
prompts: [{kind: arithmetic, n: 8, seed: 0, max_operand: 9, ops: [add], split: train}]
template: {kind: r1_zero}
grpo:
  policy: $W/tinyq
  num_generations: 4
  prompts_per_step: 2
  steps: 2
  max_completion_length: 32
  save_steps: 1
  reward_workers: 2
  prefilter: {k: 4}
YAML
t=$SECONDS
python3 -m accelerate.commands.launch --num_processes 1 -m factory.grpo.stage -c $W/gc.yaml -o $W/out > $W/log 2>&1 || { tail -40 $W/log; exit 1; }
echo "stage wall $((SECONDS-t)) s"
grep -i -E "prefilter|vllm.*(colocate|external_launcher)|Initializing a V1|KV cache|gpu_memory" $W/log | cut -c1-220 | head -12
tail -1 $W/log | cut -c1-600
ls $W/out/grpo $W/out/grpo/rollouts $W/out/grpo/checkpoints
python3 -c "
import json; [print({k: v for k, v in json.loads(l).items() if k in ('step','timing/step_s','timing/generate_s','reward','completions/mean_length')}) for l in open('$W/out/grpo/train_log.jsonl')]"
