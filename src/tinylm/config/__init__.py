"""Typed configuration (dataclasses; torch-free, so it imports fast).

    run.py       RunConfig = ModelConfig + DataConfig + TrainConfig + FinetuneConfig + LoRAConfig + DPOConfig (config.json);
                 absolute_paths; the allowed values (DTYPES, QUANTIZE, COMPILE, ...)
    options.py   GenerationConfig; InferenceOptions (checkpoint, device, dtype, quantize, compile), shared by
                 SampleConfig, EvalConfig and ServeConfig (the options of sample, eval and serve)
    fields.py    check_fields / check_range / require (every section's validate), integer / number / boolean /
                 Fields (values from users' files), check_seeds, and --set / TOML / JSON into dataclasses
    presets.py   the shipped TOML presets and user TOML files

Every CLI flag is one of these fields (its argparse `dest` is the dotted key), converted by the same code as
`--set` and TOML. `from tinylm.config import ...` reaches all of it.
"""

from tinylm.config.fields import (
                                  FLOAT32_MAX,
                                  FLOAT32_TINY,
                                  INT64_MAX,
                                  Fields,
                                  apply_overrides,
                                  boolean,
                                  check_fields,
                                  check_range,
                                  check_seeds,
                                  integer,
                                  number,
                                  parse_value,
                                  require,
                                  set_key,
                                  unsigned_seed,
                                  update,
                                  valid_keys,
)
from tinylm.config.options import MAX_BEAMS, EvalConfig, GenerationConfig, InferenceOptions, SampleConfig, ServeConfig
from tinylm.config.presets import (
                                  DEFAULT_PRESET,
                                  Reference,
                                  load_preset,
                                  preset_names,
                                  preset_reference,
                                  read_preset,
                                  read_toml,
)
from tinylm.config.run import (
                                  COMPILE,
                                  DEVICES,
                                  DTYPES,
                                  ENCODING_ERRORS,
                                  FINETUNE_FORMATS,
                                  FINETUNE_METHODS,
                                  HF_TOKENIZER,
                                  LORA_TARGETS,
                                  MAX_THREADS,
                                  MAX_WORKERS,
                                  MLPS,
                                  NORMS,
                                  OPTIMIZERS,
                                  PATH_FIELDS,
                                  POSITIONS,
                                  QUANTIZE,
                                  SAMPLING,
                                  SCHEDULES,
                                  SOURCE_FIELDS,
                                  SPLIT_METHODS,
                                  DataConfig,
                                  DPOConfig,
                                  FinetuneConfig,
                                  LoRAConfig,
                                  ModelConfig,
                                  RunConfig,
                                  TrainConfig,
                                  absolute_paths,
                                  absolute_tokenizer_spec,
)

__all__ = ["COMPILE", "DEFAULT_PRESET", "DEVICES", "DTYPES", "ENCODING_ERRORS", "FINETUNE_FORMATS", "FINETUNE_METHODS",
           "FLOAT32_MAX", "FLOAT32_TINY", "HF_TOKENIZER", "INT64_MAX", "LORA_TARGETS", "MAX_BEAMS", "MAX_THREADS",
           "MAX_WORKERS", "MLPS", "NORMS", "OPTIMIZERS", "PATH_FIELDS", "POSITIONS", "QUANTIZE", "SAMPLING",
           "SCHEDULES", "SOURCE_FIELDS", "SPLIT_METHODS", "DataConfig", "DPOConfig", "EvalConfig", "Fields", "FinetuneConfig",
           "GenerationConfig", "InferenceOptions", "LoRAConfig", "ModelConfig", "Reference", "RunConfig",
           "SampleConfig", "ServeConfig", "TrainConfig", "absolute_paths", "absolute_tokenizer_spec",
           "apply_overrides", "boolean", "check_fields", "check_range", "check_seeds", "integer", "load_preset",
           "number", "parse_value", "preset_names", "preset_reference", "read_preset", "read_toml", "require",
           "set_key", "unsigned_seed", "update", "valid_keys"]
