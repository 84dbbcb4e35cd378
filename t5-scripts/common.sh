# Sourced by every script under t5-scripts/ and scripts/: one place for the Python environment.
# BASE must be set to the repository path before sourcing.

# Use the repository's .venv unless the caller runs inside an environment of its own (USE_ACTIVE_ENV=1).
if [[ "${USE_ACTIVE_ENV:-0}" != "1" && -z "${VIRTUAL_ENV:-}" && -x "$BASE/.venv/bin/python" ]]; then
  source "$BASE/.venv/bin/activate"
fi
export PYTHONPATH="$BASE${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"

run_python() {
  python "$@"
}

# default_precision: bf16 where the GPU has it, else fp32 (V100, CPU). T5 in fp16 is refused by the trainer.
default_precision() {
  python -c "import torch; print('bf16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'fp32')"
}

# free_port: a TCP port nothing listens on now (the OS picks it), for the rendezvous of the processes of one node.
free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# launch_module MODULE [FLAGS...]: run `python -m MODULE FLAGS...` in NUM_GPUS processes per node. One process on one
# node runs as plain python (a world of one); several run under torchrun (the launcher MiniLLM's own scripts use);
# with HOSTFILE the DeepSpeed launcher starts them on every node it lists. Each launcher costs seconds of start-up,
# so the lightest one that can do the job is used. Environment:
#   NUM_GPUS [1] processes per node   NUM_NODES [1]   HOSTFILE (multi-node; see configs/hostfiles/)
#   MASTER_PORT [a port free on this node; set it on every node when each runs its own launcher (--no_ssh)]
#   LAUNCHER_ARGS (more launcher flags: torchrun's on one node, e.g. "--log-dir LOGS", which also selects torchrun
#   for one process; deepspeed's with HOSTFILE, e.g. "--no_ssh --node_rank 1")
#   OMP_NUM_THREADS [the node's cores divided by NUM_GPUS, at least 1: the processes share the cores]
launch_module() {
  local module="$1"; shift
  local num_gpus="${NUM_GPUS:-1}" num_nodes="${NUM_NODES:-1}"
  if [[ ! "$num_gpus" =~ ^[1-9][0-9]*$ || ! "$num_nodes" =~ ^[1-9][0-9]*$ ]]; then
    echo "launch_module: NUM_GPUS=$num_gpus and NUM_NODES=$num_nodes must be whole numbers >= 1" >&2
    exit 2
  fi
  if [[ -n "${HOSTFILE:-}" && ! -f "$HOSTFILE" ]]; then
    echo "launch_module: HOSTFILE=$HOSTFILE not found (examples in $BASE/configs/hostfiles/)" >&2
    exit 2
  fi
  local port="${MASTER_PORT:-$(free_port)}"
  read -ra launcher_extra <<< "${LAUNCHER_ARGS:-}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / num_gpus > 0 ? $(nproc) / num_gpus : 1 ))}"
  if [[ -n "${HOSTFILE:-}" ]]; then
    deepspeed --master_port "$port" --no_local_rank --num_gpus "$num_gpus" --hostfile "$HOSTFILE" \
      --num_nodes "$num_nodes" "${launcher_extra[@]}" --module "$module" "$@"
  elif [[ "$num_nodes" != 1 ]]; then
    echo "launch_module: NUM_NODES=$num_nodes needs HOSTFILE (examples in $BASE/configs/hostfiles/)" >&2
    exit 2
  elif [[ "$num_gpus" == 1 && ${#launcher_extra[@]} == 0 ]]; then
    python -m "$module" "$@"  # picks a free port itself unless MASTER_PORT is set
  else
    torchrun --nproc-per-node "$num_gpus" --master-addr 127.0.0.1 --master-port "$port" "${launcher_extra[@]}" \
      --module "$module" "$@"
  fi
}

# launch_training [FLAGS...]: start minillm.finetune through launch_module.
# The calling script sets its recipe (CKPT, BATCH_SIZE, GRAD_ACC, LR, EPOCHS, ZERO_STAGE, SAVE_DIR, ...) with
# ${VAR:=default}, so every one of them can be overridden from the environment; FLAGS are the recipe's own flags
# and EXTRA_ARGS (last, so it wins) the user's. Environment, besides launch_module's:
#   DATA_DIR [BASE/processed_data/anli/flan-label]   DS_CONFIG [configs/deepspeed/zero${ZERO_STAGE}_${PRECISION}.json]
#   ZERO_STAGE 0, 1, 2, 3, 2_offload, 3_offload   PRECISION [bf16 if the GPU has it, else fp32]
#   MAX_STEPS [0]  EVAL_INTERVAL [0]  SAVE_INTERVAL [0]
launch_training() {
  if [[ -z "${DS_CONFIG:-}" ]]; then
    PRECISION="${PRECISION:-$(default_precision)}"
    DS_CONFIG="$BASE/configs/deepspeed/zero${ZERO_STAGE:-0}_${PRECISION}.json"
  fi
  if [[ ! -f "$DS_CONFIG" ]]; then
    echo "launch_training: DS_CONFIG=$DS_CONFIG not found; pick a file in $BASE/configs/deepspeed/" >&2
    exit 2
  fi
  read -ra extra <<< "${EXTRA_ARGS:-}"
  mkdir -p "$SAVE_DIR"
  echo "launch_training: ${NUM_NODES:-1} node(s) x ${NUM_GPUS:-1} process(es), $(basename "$DS_CONFIG"), -> $SAVE_DIR"
  launch_module minillm.finetune \
    --model-path "$CKPT" --data-dir "${DATA_DIR:-$BASE/processed_data/anli/flan-label}" --save-dir "$SAVE_DIR" \
    --deepspeed-config "$DS_CONFIG" --batch-size "$BATCH_SIZE" --grad-acc "$GRAD_ACC" --lr "$LR" \
    --epochs "$EPOCHS" --max-steps "${MAX_STEPS:-0}" --eval-interval "${EVAL_INTERVAL:-0}" \
    --save-interval "${SAVE_INTERVAL:-0}" "$@" "${extra[@]}"
}

# launch_minillm [FLAGS...]: launch_training with --type minillm and the MiniLLM recipe variables the calling script
# set (TEACHER_CKPT, PROMPT_DATA_DIR, LM_DATA_DIR (empty: no LM term), LM_COEF, NUM_ROLLOUTS, CHUNK_SIZE,
# PPO_EPOCHS, ALPHA, GAMMA, MAX_NEW_TOKENS, SELECT_BY, WARMUP_STEPS, TEACHER_TOPK [0: full teacher distributions]),
# MiniLLM's optimiser settings (constant rate
# after warmup, AdamW betas 0.9/0.95, weight decay 1e-6) and FLAGS.
launch_minillm() {
  local lm_args=()
  if [[ -n "$LM_DATA_DIR" ]]; then lm_args=(--lm-data-dir "$LM_DATA_DIR" --lm-coef "$LM_COEF"); fi
  export MAX_STEPS EVAL_INTERVAL SAVE_INTERVAL
  launch_training --type minillm --teacher-model-path "$TEACHER_CKPT" --prompt-data-dir "$PROMPT_DATA_DIR" \
    "${lm_args[@]}" --num-rollouts "$NUM_ROLLOUTS" --chunk-size "$CHUNK_SIZE" --ppo-epochs "$PPO_EPOCHS" \
    --teacher-mixed-alpha "$ALPHA" --gamma "$GAMMA" --rollout-max-new-tokens "$MAX_NEW_TOKENS" \
    --teacher-topk "${TEACHER_TOPK:-0}" \
    --scheduler constant --warmup-steps "${WARMUP_STEPS:-100}" --adam-betas 0.9 0.95 --weight-decay 1e-6 \
    --select-by "$SELECT_BY" "$@"
}
