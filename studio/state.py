"""Every session-state key the app uses, in one place.

Widget keys double as session-state keys (Streamlit stores a keyed widget's value under its key), so they are named
after what they control: "router.temperature" is the sidebar's temperature slider. Keys of charts and buttons are here
too, so tests find every element by one name. Keys that hold app objects rather than widget values start with "_" so
they never collide with a widget.
"""

# --- sidebar (shared by every page) ------------------------------------------------------------------------------
DEVICE = "device.choice"
PRECISION = "device.precision"
TRAIN_SIZE = "train.size"
MODEL_SOURCE = "model.source"
UPLOAD_WEIGHTS = "model.upload_weights"
UPLOAD_CONFIG = "model.upload_config"
TEMPERATURE = "router.temperature"
LOAD_BALANCE_WEIGHT = "router.load_balance_weight"
TOP_K = "router.top_k"
CAPACITY_FACTOR = "router.capacity_factor"
EXPERT_TYPES = "experts.types"
NUM_EXPERTS = "experts.num"
CUSTOM_FORM = "experts.custom.form"
CUSTOM_NAME = "experts.custom.name"
CUSTOM_ACTIVATION = "experts.custom.activation"
CUSTOM_WIDTH = "experts.custom.width_multiplier"
CUSTOM_NORM = "experts.custom.norm"
CUSTOM_SUBMIT = "experts.custom.submit"
HF_SOURCE = "model.hf_source"
HF_DOWNLOAD = "model.hf_download"

# --- app objects -------------------------------------------------------------------------------------------------
SETTINGS = "_settings"  # studio.settings.Settings resolved from the sidebar on this run
ACTIVE_SOURCE = "_active_source"  # studio.engine.ModelSource in use (kept when a new one fails to load)
UPLOADS = "_uploads"  # digest -> (weights, config, name) of this session's accepted upload
UPLOAD_FAILURE = "_upload_failure"  # (digest, message) of the last rejected upload, so it is not re-parsed each run
CUSTOM_TYPES = "_custom_types"  # names of the expert types this session registered
CUSTOM_MESSAGE = "_custom_message"  # ("ok" | "error", text) left by the custom-type form's callback
TRAIN_RUN_ID = "_train_run_id"  # id of this session's run in the training worker's registry (also in the URL)
TRAIN_LOST_RUN = "_train_lost_run"  # a run id from the URL that the server no longer holds
TRAIN_FIGURES = "_train_figures"  # (run id, step, layer, probe step) -> the live charts, rebuilt only on a new step
TRAIN_STEP_NOTE = "_train_note"  # a one-off message for the training page ("model rebuilt")
TRAIN_BUSY = "_train_busy"  # Start found every training slot of the server taken
PERF_RESULTS = "_perf_results"
PERF_SYSTEMS_RESULTS = "_perf_systems_results"
PERF_TRAIN_RESULTS = "_perf_train_results"  # (flat rows, meta) of this session's last training-step sweep
OPT_RESULTS = "_opt_results"
OPT_ONNX_BYTES = "_opt_onnx"
HF_ACTIVE = "_hf_active"  # pimoe.hf.HFMoEModel in use (kept when another folder fails to load)

# --- routing lab -------------------------------------------------------------------------------------------------
LAB_PRESET = "lab.preset"
LAB_TEXT = "lab.text"
LAB_LAYER = "lab.layer"
LAB_HEATMAP = "lab.heatmap"
LAB_STRIP = "lab.strip"
LAB_LOAD = "lab.load"
LAB_CONFIDENCE = "lab.confidence"
LAB_RETRY_CPU = "lab.retry_cpu"
LAB_FRESH_MODEL = "lab.fresh_model"

# --- routing lab, Hugging Face model ------------------------------------------------------------------------------
HF_TEXT = "hf.text"
HF_LAYER = "hf.layer"
HF_PATH_CHART = "hf.path"
HF_LOAD_CHART = "hf.load"
HF_COACTIVATION_CHART = "hf.coactivation"
HF_SPECIALIZATION_CHART = "hf.specialization"
HF_VOCABULARY_CHART = "hf.vocabulary"
HF_CF_TEMPERATURE = "hf.cf_temperature"
HF_CF_TOP_K = "hf.cf_top_k"
HF_CF_LAYER = "hf.cf_layer"
HF_CF_FORCE = "hf.cf_force"
HF_CF_ABLATE = "hf.cf_ablate"
HF_CF_TOKENS = "hf.cf_tokens"
HF_LOGPROB_CHART = "hf.logprob"
HF_DIFF_CHART = "hf.routing_diff"
HF_RETRY_CPU = "hf.retry_cpu"

# --- live training -----------------------------------------------------------------------------------------------
TRAIN_START = "train.start"
TRAIN_PAUSE = "train.pause"
TRAIN_RESUME = "train.resume"
TRAIN_RESET = "train.reset"
TRAIN_ADAPTIVE = "train.adaptive"
TRAIN_PROBE = "train.probe"
TRAIN_LAYER = "train.layer"
TRAIN_LOSS_CHART = "train.loss_chart"
TRAIN_ACCURACY_CHART = "train.accuracy_chart"
TRAIN_LOAD_CHART = "train.load_chart"
TRAIN_LATENCY_CHART = "train.latency_chart"
TRAIN_PROBE_CHART = "train.probe_chart"
TRAIN_ADAPTATION_CHART = "train.adaptation_chart"
TRAIN_RETRY_CPU = "train.retry_cpu"
TRAIN_SAVE_CHECKPOINT = "train.save_checkpoint"
TRAIN_SAVE_CSV = "train.save_csv"
TRAIN_SAVE_JSON = "train.save_json"
TRAIN_TO_LAB = "train.to_lab"

# --- performance -------------------------------------------------------------------------------------------------
PERF_FORM = "perf.form"
PERF_BATCHES = "perf.batches"
PERF_SEQS = "perf.seqs"
PERF_HIDDEN = "perf.hidden"
PERF_DTYPE = "perf.dtype"
PERF_REPEATS = "perf.repeats"
PERF_INCLUDE_LOOP = "perf.include_loop"
PERF_INCLUDE_DENSE = "perf.include_dense"
PERF_RUN = "perf.run"
PERF_LATENCY_CHART = "perf.latency_chart"
PERF_THROUGHPUT_CHART = "perf.throughput_chart"
PERF_CSV = "perf.csv"
PERF_RETRY_CPU = "perf.retry_cpu"
PERF_SYSTEMS_RUN = "perf.systems_run"
PERF_SYSTEMS_CSV = "perf.systems_csv"
PERF_SYSTEMS_RETRY_CPU = "perf.systems_retry_cpu"
PERF_TRAIN_FORM = "perf.train.form"
PERF_TRAIN_TOKENS = "perf.train.tokens"
PERF_TRAIN_SORTED = "perf.train.include_sorted"
PERF_TRAIN_RUN = "perf.train.run"
PERF_TRAIN_CHART = "perf.train.chart"
PERF_TRAIN_CSV = "perf.train.csv"
PERF_TRAIN_RETRY_CPU = "perf.train.retry_cpu"

# --- optimisation ------------------------------------------------------------------------------------------------
OPT_FORM = "opt.form"
OPT_SOURCE = "opt.source"
OPT_LAYER = "opt.layer"
OPT_HIDDEN = "opt.hidden"
OPT_QUANTIZE = "opt.quantize"
OPT_PRUNE = "opt.prune"
OPT_PRUNE_AMOUNT = "opt.prune_amount"
OPT_IMPORTANCE = "opt.importance"
OPT_RUN = "opt.run"
OPT_RETRY_CPU = "opt.retry_cpu"
OPT_ONNX = "opt.onnx"
OPT_ONNX_DOWNLOAD = "opt.onnx_download"
OPT_ONNX_RETRY_CPU = "opt.onnx_retry_cpu"

# --- guide -------------------------------------------------------------------------------------------------------
GUIDE_TOKEN = "guide.token"
GUIDE_TEMPERATURE = "guide.temperature"
GUIDE_TOP_K = "guide.top_k"
GUIDE_BALANCE_SKEW = "guide.balance_skew"
GUIDE_SOFTMAX_CHART = "guide.softmax_chart"
GUIDE_SOFTMAX_PROBS_CHART = "guide.softmax_probs_chart"
GUIDE_BALANCE_CHART = "guide.balance_chart"
GUIDE_RETRY_CPU = "guide.retry_cpu"

# --- computation -------------------------------------------------------------------------------------------------
COMPUTE_EVAL_RESULTS = "_compute_eval"  # the report dict of this session's last evaluation run
COMPUTE_PRESET = "compute.preset"
COMPUTE_PROMPT = "compute.prompt"
COMPUTE_MAX_TOKENS = "compute.max_new_tokens"
COMPUTE_THRESHOLD = "compute.threshold"
COMPUTE_LAYER = "compute.layer"
COMPUTE_ROUTING_CHART = "compute.routing_chart"
COMPUTE_RETRY_CPU = "compute.retry_cpu"
COMPUTE_EVAL_PROBLEMS = "compute.eval_problems"
COMPUTE_EVAL_RUN = "compute.eval_run"
COMPUTE_EVAL_RETRY_CPU = "compute.eval_retry_cpu"
COMPUTE_HELDOUT_RUN = "compute.heldout_run"
COMPUTE_HELDOUT_RESULTS = "_compute_heldout"  # {"routing": ..., "handoff": ...} of this session's held-out run
COMPUTE_HELDOUT_CHART = "compute.heldout_chart"
COMPUTE_HELDOUT_SAVED_CHART = "compute.heldout_saved_chart"

__all__ = sorted(name for name in dir() if name.isupper())
