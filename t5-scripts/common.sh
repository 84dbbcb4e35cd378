# Sourced by every script under t5-scripts/ and scripts/: the Python environment, -h, DRY_RUN and the launchers.
# REPO is the checkout this file belongs to (code, configs/, .venv); BASE, set by the calling script (usually from
# its first argument), is the folder holding processed_data/, results/ and checkpoints/: the checkout itself as a
# rule, another folder (a larger disk, a test's scratch folder) when the caller passes one.
# DRY_RUN=1: the first command a script would run (python or a launcher with its module and every flag) is printed
# as one shell-quoted line on stdout instead, and the script ends with status 0, having run and created nothing.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The script that sourced this file, as an absolute path (before it can cd): warn_unknown_settings reads it.
_calling_script="$(cd "$(dirname "${BASH_SOURCE[-1]}")" && pwd)/$(basename "${BASH_SOURCE[-1]}")"
# Every script of the chain that led here (run_default.sh -> a recipe): a setting an outer script reads and passes on
# through the environment is not "ignored" by the inner one.
export MINILLM_OUTER_SCRIPTS="${MINILLM_OUTER_SCRIPTS:+$MINILLM_OUTER_SCRIPTS:}$_calling_script"

# Use the repository's .venv unless the caller runs inside an environment of its own (USE_ACTIVE_ENV=1). install.sh
# installs this checkout there (editable), so `python -m minillm...` and its launchers' workers import it from any
# folder.
if [[ "${USE_ACTIVE_ENV:-0}" != "1" && -z "${VIRTUAL_ENV:-}" && -x "$REPO/.venv/bin/python" ]]; then
  source "$REPO/.venv/bin/activate"
fi
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"
# VERBOSE=1: the libraries' own output too (DeepSpeed's accelerator detection, transformers' tied-weights warning
# and weight-loading bars), which the Python entrypoints leave out otherwise (minillm/console.py). Exported, so that
# a value set in a calling script reaches every process.
export VERBOSE="${VERBOSE:-0}"

# exit_with_usage_if_asked "$@": with -h or --help as the first argument, print the calling script's header (the
# comment block under its shebang) and exit 0. Scripts call it first, before they check or touch anything.
exit_with_usage_if_asked() {
  [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] || return 0
  sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[1]}"
  exit 0
}

# run_or_print COMMAND...: run COMMAND, or with DRY_RUN=1 print it (one line, shell-quoted) and end the script.
run_or_print() {
  warn_about_launch
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
    exit 0
  fi
  "$@"
}

run_python() {
  run_or_print python "$@"
}

# default_precision: bf16 where the GPU has it natively, else fp32 (V100, CPU). A V100 emulates bf16, which
# torch.cuda.is_bf16_supported() counts unless told not to. T5 in fp16 is refused by the trainer.
default_precision() {
  python -c "import torch; print('bf16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False) else 'fp32')"
}

# default_num_gpus: the number of GPUs this node shows (`nvidia-smi -L`), counting only those CUDA_VISIBLE_DEVICES
# names when it is set; 1 without a GPU (a CPU runs one process). Scripts take it as NUM_GPUS when neither their
# second argument nor NUM_GPUS says otherwise.
default_num_gpus() {
  local listed=0 visible=-1 id
  if command -v nvidia-smi > /dev/null 2>&1; then
    listed="$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true)"
  fi
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    visible=0
    local ids
    IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
    for id in "${ids[@]}"; do  # CUDA stops at the first entry it cannot use (-1, empty)
      id="${id// /}"
      [[ -z "$id" || "$id" == -* ]] && break
      visible=$((visible + 1))
    done
    if (( listed > 0 && visible > listed )); then visible="$listed"; fi
    listed="$visible"
  fi
  echo $(( listed > 0 ? listed : 1 ))
}

# warn_unknown_settings LABEL: one stderr line for each upper-case environment variable that looks like a setting
# of the calling script but is none (neither the script nor common.sh reads it), so it would be silently ignored:
# a name within edit distance 2 of a real setting ("MAX_STEP=5 ...; did you mean MAX_STEPS?"), or one another
# script under scripts/ or t5-scripts/ reads (TRAIN_ROUND on a recipe that has no rounds). System variables (PATH,
# CUDA_*, NCCL_*, ...) are never reported. A warning, not an error: the run goes on.
warn_unknown_settings() {
  local label="$1" script="$_calling_script"
  [[ -f "$script" && "$(basename "$script")" != common.sh ]] || return 0
  python - "$label" "$script" "${BASH_SOURCE[0]}" "$REPO" <<'PY' || true
import os, re, sys
from pathlib import Path
label, script, common, repo = sys.argv[1:5]
names = lambda path: set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", Path(path).read_text(errors="replace")))
system = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "MAIL",
          "TMPDIR", "TZ", "DISPLAY", "EDITOR", "PAGER", "VISUAL", "COLUMNS", "LINES", "OMP_NUM_THREADS",
          "PYTHONPATH", "VIRTUAL_ENV", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
          "TOKENIZERS_PARALLELISM", "HF_HOME", "HF_HUB_OFFLINE", "DEBIAN_FRONTEND"}
system_prefixes = ("LC_", "CUDA_", "NCCL_", "NVIDIA_", "OMP_", "MKL_", "KMP_", "PYTHON", "PIP_", "CONDA", "HF_",
                   "TRANSFORMERS_", "TORCH", "WANDB_", "SLURM_", "PBS_", "SSH_", "XDG_", "GIT_", "SSL_", "TERM_",
                   "PYENV", "VIRTUAL_ENV", "LD_", "DBUS_", "TMUX", "BASH_", "HIST", "NODE_", "NPM_", "CARGO",
                   "RUST", "AWS_", "GOOGLE_", "GCP_", "AZURE_", "KUBERNETES_", "DOCKER_")
own = names(common).union(*(names(path) for path in os.environ.get("MINILLM_OUTER_SCRIPTS", script).split(":")
                             if os.path.isfile(path)))
others = {}
for folder in ("scripts", "t5-scripts"):
    for path in sorted(Path(repo, folder).rglob("*.sh")):
        for name in names(path):
            others.setdefault(name, path.name)

def distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]

where = os.path.basename(script)
for name in sorted(os.environ):
    if (not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or name in own or name in system
            or name.startswith(system_prefixes) or len(name) < 3):
        continue
    best = min(own, key=lambda real: (distance(name, real), real)) if own else None
    close = best is not None and distance(name, best) <= (1 if len(name) <= 5 else 2)
    if close or name in others:
        hint = f"did you mean {best}?" if close else f"{others[name]} reads it, {where} does not"
        print(f"{label}: WARNING: {name} is not a setting of {where}, so {name}={os.environ[name]} is ignored; "
              f"{hint}", file=sys.stderr)
PY
}

# warn_about_launch: the checks every script gets before its first command runs (or is printed with DRY_RUN=1):
# ignored settings (warn_unknown_settings), labelled with the outermost common.sh function the script called.
warn_about_launch() {
  local label="${FUNCNAME[1]}" f
  for f in "${FUNCNAME[@]:1}"; do
    [[ "$f" == main || "$f" == source ]] && break
    label="$f"
  done
  warn_unknown_settings "$label"
}

# free_port: a TCP port nothing listens on now (the OS picks it), for the rendezvous of the processes of one node.
free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# check_hostfile: with HOSTFILE, end the script (one line, status 2) before anything is created or launched when the
# file is missing or when a host it names does not resolve here (getent hosts): the DeepSpeed launcher would fail only
# after its ssh attempts, with a Python traceback. Hosts are not checked with --no_ssh in LAUNCHER_ARGS (each node
# starts its own processes and no host is reached by name) nor in a dry run (which may print a cluster's command on
# a machine outside it).
check_hostfile() {
  [[ -n "${HOSTFILE:-}" ]] || return 0
  if [[ ! -f "$HOSTFILE" ]]; then
    echo "launch_module: HOSTFILE=$HOSTFILE not found (examples in $REPO/configs/hostfiles/)" >&2
    exit 2
  fi
  [[ " ${LAUNCHER_ARGS:-} " != *" --no_ssh "* && "${DRY_RUN:-0}" != "1" ]] && command -v getent > /dev/null 2>&1 \
    || return 0
  local host
  while read -r host _ || [[ -n "$host" ]]; do  # the last line may lack its newline
    [[ -z "$host" || "$host" == \#* ]] && continue
    if ! getent hosts "$host" > /dev/null; then
      echo "launch_module: HOSTFILE=$HOSTFILE names host $host, which does not resolve here (getent hosts $host);" \
        "correct the name or add it to /etc/hosts" >&2
      exit 2
    fi
  done < "$HOSTFILE"
}

# launch_module MODULE [FLAGS...]: run `python -m MODULE FLAGS...` in NUM_GPUS processes per node. One process on one
# node runs as plain python (a world of one); several run under torchrun (the launcher MiniLLM's own scripts use);
# with HOSTFILE the DeepSpeed launcher starts them on every node it lists. Each launcher costs seconds of start-up,
# so the lightest one that can do the job is used. Environment:
#   NUM_GPUS [1; scripts default it to default_num_gpus: the GPUs this node shows, 1 without one] processes per
#   node (a warning when they outnumber the node's cores, nproc)   NUM_NODES [1]   HOSTFILE (multi-node; see configs/hostfiles/)
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
  check_hostfile
  local cores
  cores="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2> /dev/null || echo 0)"  # the cores, not a thread cap
  if (( cores > 0 && num_gpus > cores )); then
    echo "launch_module: WARNING: NUM_GPUS=$num_gpus processes per node outnumber this node's $cores cores (nproc);" \
      "set NUM_GPUS (or the script's second argument) to the node's GPUs, 1 on a CPU" >&2
  fi
  local port="${MASTER_PORT:-$(free_port)}"
  read -ra launcher_extra <<< "${LAUNCHER_ARGS:-}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / num_gpus > 0 ? $(nproc) / num_gpus : 1 ))}"
  if [[ -n "${HOSTFILE:-}" ]]; then
    run_or_print deepspeed --master_port "$port" --no_local_rank --num_gpus "$num_gpus" --hostfile "$HOSTFILE" \
      --num_nodes "$num_nodes" "${launcher_extra[@]}" --module "$module" "$@"
  elif [[ "$num_nodes" != 1 ]]; then
    echo "launch_module: NUM_NODES=$num_nodes needs HOSTFILE (examples in $REPO/configs/hostfiles/)" >&2
    exit 2
  elif [[ "$num_gpus" == 1 && ${#launcher_extra[@]} == 0 ]]; then
    run_or_print python -m "$module" "$@"  # picks a free port itself unless MASTER_PORT is set
  else
    run_or_print torchrun --nproc-per-node "$num_gpus" --master-addr 127.0.0.1 --master-port "$port" \
      "${launcher_extra[@]}" --module "$module" "$@"
  fi
}

# launch_training [FLAGS...]: start minillm.finetune through launch_module.
# The calling script sets its recipe (CKPT, BATCH_SIZE, GRAD_ACC, LR, EPOCHS, ZERO_STAGE, SAVE_DIR, ...) with
# ${VAR:=default}, so every one of them can be overridden from the environment; FLAGS are the recipe's own flags
# and EXTRA_ARGS (last, so it wins) the user's. Environment, besides launch_module's:
#   DATA_DIR [BASE/processed_data/anli/flan-label]   DS_CONFIG [configs/deepspeed/zero${ZERO_STAGE}_${PRECISION}.json]
#   ZERO_STAGE 0, 1, 2, 3, 2_offload, 3_offload   PRECISION [bf16 if the GPU has it, else fp32]
#   MAX_STEPS [0]  EVAL_INTERVAL [0]  SAVE_INTERVAL [0]
#   MODEL_PARALLEL_SIZE [empty] MiniLLM's tensor-parallel degree, passed as --model-parallel --model-parallel-size;
#     the engine shards with ZeRO-3 instead and refuses a DS_CONFIG below stage 3 (minillm/engine/config.py)
launch_training() {
  if [[ -z "${DS_CONFIG:-}" ]]; then
    PRECISION="${PRECISION:-$(default_precision)}"
    DS_CONFIG="$REPO/configs/deepspeed/zero${ZERO_STAGE:-0}_${PRECISION}.json"
  fi
  if [[ ! -f "$DS_CONFIG" ]]; then
    echo "launch_training: DS_CONFIG=$DS_CONFIG not found; pick a file in $REPO/configs/deepspeed/" >&2
    exit 2
  fi
  read -ra extra <<< "${EXTRA_ARGS:-}"
  local model_parallel=()
  if [[ -n "${MODEL_PARALLEL_SIZE:-}" ]]; then
    model_parallel=(--model-parallel --model-parallel-size "$MODEL_PARALLEL_SIZE")
  fi
  check_hostfile  # before SAVE_DIR is made
  if [[ "${DRY_RUN:-0}" != "1" ]]; then  # a dry run prints the command alone and creates nothing
    mkdir -p "$SAVE_DIR"
    local processes="?" global="?"  # launch_module refuses counts that are not whole numbers
    if [[ "${NUM_NODES:-1}${NUM_GPUS:-1}" =~ ^[0-9]+$ ]]; then processes=$(( ${NUM_NODES:-1} * ${NUM_GPUS:-1} )); fi
    if [[ "$processes$BATCH_SIZE$GRAD_ACC" =~ ^[0-9]+$ ]]; then global=$(( BATCH_SIZE * processes * GRAD_ACC )); fi
    echo "launch_training: ${NUM_NODES:-1} node(s) x ${NUM_GPUS:-1} process(es), global batch $global" \
      "(BATCH_SIZE $BATCH_SIZE x $processes process(es) x GRAD_ACC $GRAD_ACC), $(basename "$DS_CONFIG"), -> $SAVE_DIR"
  fi
  launch_module minillm.finetune \
    --model-path "$CKPT" --data-dir "${DATA_DIR:-$BASE/processed_data/anli/flan-label}" --save-dir "$SAVE_DIR" \
    --deepspeed-config "$DS_CONFIG" --batch-size "$BATCH_SIZE" --grad-acc "$GRAD_ACC" --lr "$LR" \
    --epochs "$EPOCHS" --max-steps "${MAX_STEPS:-0}" --eval-interval "${EVAL_INTERVAL:-0}" \
    --save-interval "${SAVE_INTERVAL:-0}" "${model_parallel[@]}" "$@" "${extra[@]}"
}

# launch_minillm [FLAGS...]: launch_training with --type minillm and the MiniLLM recipe variables the calling script
# set (TEACHER_CKPT, PROMPT_DATA_DIR, LM_DATA_DIR (set and empty: no LM term), LM_COEF, NUM_ROLLOUTS, CHUNK_SIZE,
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

# ---- Decoder-only families on Dolly (scripts/gpt2, scripts/opt, scripts/llama), MiniLLM's setting -----------------
# The calling script sets FAMILY (gpt2, opt, llama): the processed Dolly data is BASE/processed_data/dolly/FAMILY (one
# round, dolly; splits train, dev, test), the LM corpus BASE/processed_data/pretrain/FAMILY, and results go to
# BASE/results/FAMILY/METHOD/SIZE. MiniLLM's lengths: prompts of at most 256 tokens, sequences of at most 512, so
# targets, rollouts and generated answers get 256.
# MiniLLM splits its large models 4 ways (MP_SIZE=4), so its data-parallel width is GPUs / 4; ZeRO-3 runs every GPU
# as a data-parallel process, so recipes ported from a model-parallel one divide MiniLLM's per-process BATCH_SIZE and
# CHUNK_SIZE by 4: the same global batch and rollouts per sampling call.

# launch_dolly_training LAUNCHER [FLAGS...]: LAUNCHER (launch_training or launch_minillm) with Dolly's data, rounds
# and lengths, MiniLLM's seed and cosine floor, and FLAGS. Environment: DATA_DIR [BASE/processed_data/dolly/FAMILY],
# EVAL_BATCH_SIZE [8], SEED [10], besides the launcher's.
launch_dolly_training() {
  local launcher="$1"; shift
  DATA_DIR="${DATA_DIR:-$BASE/processed_data/dolly/$FAMILY}"
  "$launcher" --train-round dolly --eval-rounds dolly --max-prompt-length 256 --max-target-length 256 \
    --eval-max-new-tokens 256 --eval-batch-size "${EVAL_BATCH_SIZE:-8}" --lr-min 1e-7 --seed "${SEED:-10}" "$@"
}

# launch_dolly_seqkd_generation: the teacher (TEACHER_CKPT) samples one answer per Dolly training prompt, as
# MiniLLM's generate_data_seqkd.sh does (temperature 1, no top-k or top-p cut, up to 256 new tokens), into GEN_DIR.
# Environment: DATA_DIR [BASE/processed_data/dolly/FAMILY], BATCH_SIZE [16] prompts per process and call,
# DTYPE [auto], SEED [10], EXTRA_ARGS, besides launch_module's; ZERO_STAGE=3 (3_offload, or DS_CONFIG) shards the
# teacher over the processes (--deepspeed-config configs/deepspeed/zero${ZERO_STAGE}_${PRECISION}.json).
launch_dolly_seqkd_generation() {
  read -ra extra <<< "${EXTRA_ARGS:-}"
  if [[ -n "${DS_CONFIG:-}" || "${ZERO_STAGE:-}" == 3* ]]; then
    local config="${DS_CONFIG:-$REPO/configs/deepspeed/zero${ZERO_STAGE}_${PRECISION:-$(default_precision)}.json}"
    extra=(--deepspeed-config "$config" "${extra[@]}")
  fi
  launch_module minillm.generate_seqkd --model-path "$TEACHER_CKPT" \
    --data-dir "${DATA_DIR:-$BASE/processed_data/dolly/$FAMILY}" --out-dir "$GEN_DIR" --rounds dolly --split train \
    --batch-size "${BATCH_SIZE:-16}" --max-new-tokens 256 --dtype "${DTYPE:-auto}" --decoding sample \
    --temperature 1.0 --top-k 0 --top-p 1.0 --num-samples 1 --seed "${SEED:-10}" "${extra[@]}"
}

# evaluate_dolly SIZE: MiniLLM's evaluation on Dolly's test split of CKPTS (space-separated) or, by default, the
# best/ of the four methods' SIZE students (BASE/results/FAMILY/{sft,kd,seqkd,minillm}/SIZE/best): answers sampled at
# temperature 1 with no top-k or top-p cut, once per seed (10 20 30 40 50), Rouge-L averaged over the seeds. MiniLLM
# also bans repeating any 6-gram (its --no-repeat-ngram-size default, which its evaluation scripts keep).
# Environment: DATA_DIR [BASE/processed_data/dolly/FAMILY], SPLIT [test], SEEDS ["10 20 30 40 50"], BATCH_SIZE [8],
# NO_REPEAT_NGRAM_SIZE [6], EXTRA_ARGS (more flags for python -m minillm.evaluate). ZERO_STAGE=3 (3_offload, or
# DS_CONFIG) shards every model over NUM_GPUS processes (launch_module; --deepspeed-config
# configs/deepspeed/zero${ZERO_STAGE}_${PRECISION}.json, whose precision is then the dtype); else one process.
evaluate_dolly() {
  local size="$1" checkpoints seeds extra launch=(run_python -m minillm.evaluate)
  if [[ -n "${CKPTS:-}" ]]; then
    read -ra checkpoints <<< "$CKPTS"
  else
    checkpoints=("$BASE/results/$FAMILY/"{sft,kd,seqkd,minillm}"/$size/best")
  fi
  read -ra seeds <<< "${SEEDS:-10 20 30 40 50}"
  read -ra extra <<< "${EXTRA_ARGS:-}"
  if [[ -n "${DS_CONFIG:-}" || "${ZERO_STAGE:-}" == 3* ]]; then
    launch=(launch_module minillm.evaluate --deepspeed-config
            "${DS_CONFIG:-$REPO/configs/deepspeed/zero${ZERO_STAGE}_${PRECISION:-$(default_precision)}.json}")
  fi
  "${launch[@]}" --model-path "${checkpoints[@]}" \
    --data-dir "${DATA_DIR:-$BASE/processed_data/dolly/$FAMILY}" --split "${SPLIT:-test}" --rounds dolly \
    --seeds "${seeds[@]}" --decoding sample --temperature 1.0 --top-k 0 --top-p 1.0 \
    --no-repeat-ngram-size "${NO_REPEAT_NGRAM_SIZE:-6}" --max-new-tokens 256 --max-prompt-length 256 \
    --batch-size "${BATCH_SIZE:-8}" "${extra[@]}"
}
