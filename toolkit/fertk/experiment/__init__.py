"""`fertk experiment`: the paper's three experiments (real only, synthetic only, real + k synthetic
units) with repeats, cross-database tests, resumable cells and a summary report."""

from fertk.experiment.config import DEFAULT_K, DatasetSpec, ExperimentConfig, config_from_toml_text, load_config, parse_k_list
from fertk.experiment.cells import Cell, plan_cells
from fertk.experiment.distribute import DISTRIBUTORS
from fertk.experiment.report import report_from_run_dir, summarize
from fertk.experiment.runner import ExperimentResult, run_experiment
from fertk.experiment.standin import PRESETS, init_procedural, procedural_config_text
from fertk.experiment.stats import Interval, mean_ci, t_quantile

__all__ = ["DEFAULT_K", "DISTRIBUTORS", "PRESETS", "Cell", "DatasetSpec", "ExperimentConfig", "ExperimentResult",
           "Interval", "config_from_toml_text", "init_procedural", "load_config", "mean_ci", "parse_k_list",
           "plan_cells", "procedural_config_text", "report_from_run_dir", "run_experiment", "summarize", "t_quantile"]
