"""The bad-input corpus of the newer commands and sources: mil, wsddn, semi, pretrain, pack, plot, report,
--config files, tar: shards, coco: JSON, scenes: and bagfolder: data, and the older commands (teach, label,
distill, hint, eval, info) handed artifacts of another task (a detector, MIL or WSDDN checkpoint, a box label
folder) where a classifier's go, and the reverse. The older commands' own cases are in tests/test_bad_inputs.py.

The rule every case keeps (`assert_refused_cleanly`): exit code 2, no exception, no traceback, at most 3
non-empty lines on stderr (typer's own boxed usage errors for a malformed option are allowed, with the option
named: `usage=True`), the words of the case on stderr (the file or option named; loose, the wording may
change); the output (-o) does not exist afterwards, and nothing under the inputs was added, removed or changed
(a listing of the shared artifacts and of the case's own folder, taken before and after, is equal).

Inputs are made by fixtures in tmp folders: the shared artifacts ({teacher}, {labels}, {detector}, {boxes},
{mil}, {wsddn}, ...) once per module by dpl itself, the bad ones fresh in the case's own folder on first
mention ({deep_coco}, {log_nan}, ...). A case runs under a time guard: one that is not refused and starts
real work fails in GUARD_S seconds instead of running on.
"""

import gzip
import io
import json
import os
import resource
import shutil
import signal
import tarfile
from pathlib import Path

import pytest

from conftest import Placeholders, dpl, listing, write_imagefolder

GUARD_S = 12          # seconds a case may take: a refusal is immediate
HEADROOM = 4 << 30    # bytes of address space a case may add: a refusal needs next to none


def case(id, *args, words=(), usage=False):
    """One bad invocation: `words` must appear on stderr; `usage` for typer's own (boxed) usage errors."""
    return pytest.param(list(args), tuple(words), usage, id=id)


FAST = ("--epochs", "1", "--device", "cpu")
O = "-o"
CK = "{tmp}/out.safetensors"       # the output of a training command
# small runs of each command, so that a case that is not refused ends soon instead of training for real
MIL = ("mil", "--data", "digits", "--target-class", "3", "--bags", "8", "--test-bags", "8", "--bag-size", "3",
       "--arch", "cnn-s", "--bag-batch", "4", *FAST)
MILF = ("mil", "--arch", "cnn-s", "--bag-batch", "4", *FAST)                  # + --data bagfolder:...
WS = ("wsddn", "--data", "scenes:digits", "--canvas", "32", "--object-size", "8,14", "--scenes", "8",
      "--test-scenes", "4", "--arch", "cnn-s", "--hidden", "16", "--batch-size", "8", *FAST)
WSC = ("wsddn", "--resize", "32", "--arch", "cnn-s", "--hidden", "16", "--batch-size", "4", *FAST)   # + --data coco:
SEMI = ("semi", "--labeled-per-class", "10", "--arch", "cnn-s", "--batch-size", "32", "--mu", "2", *FAST)
PRE = ("pretrain", "--arch", "cnn-s", "--batch-size", "64", *FAST)
TEACH = ("teach", "--arch", "cnn-s", "--batch-size", "64", *FAST)
DET = ("teach", "--arch", "frcnn-cnn-s", "--batch-size", "16", *FAST)         # + --data scenes:/coco:
SCN = ("--data", "scenes:digits", "--canvas", "32", "--objects", "1,2", "--object-size", "10,16", "--scenes", "16",
       "--test-scenes", "8")
FIG = "{tmp}/fig"                  # the output stem of a plot

CASES = [
    # ---- mil ------------------------------------------------------------------------------------------------
    case("mil-detector-arch", *MIL, "--arch", "frcnn-cnn-s", O, CK, words=["frcnn-cnn-s"]),
    case("mil-bags-beyond-the-machine", *MIL, "--bags", "1000000000000", O, CK, words=["--bags"]),
    case("mil-test-bags-beyond-the-machine", *MIL, "--test-bags", "1000000000000", O, CK, words=["--test-bags"]),
    case("mil-bag-size-beyond-the-machine", *MIL, "--bag-size", "1e12", O, CK, words=["--bag-size"]),
    case("mil-bag-size-std-beyond-the-machine", *MIL, "--bag-size-std", "1e12", O, CK, words=["--bag-size-std"]),
    case("mil-bag-size-nan", *MIL, "--bag-size", "nan", O, CK, words=["--bag-size"]),
    case("mil-bag-size-inf", *MIL, "--bag-size", "inf", O, CK, words=["--bag-size"]),
    case("mil-bag-size-zero", *MIL, "--bag-size", "0", O, CK, words=["--bag-size"]),
    case("mil-bag-size-std-negative", *MIL, "--bag-size-std", "-1", O, CK, words=["--bag-size-std"]),
    case("mil-bag-size-std-nan", *MIL, "--bag-size-std", "nan", O, CK, words=["--bag-size-std"]),
    case("mil-bags-negative", *MIL, "--bags", "-5", O, CK, words=["--bags"]),
    case("mil-test-bags-zero", *MIL, "--test-bags", "0", O, CK, words=["--test-bags"]),
    case("mil-bag-batch-zero", *MIL, "--bag-batch", "0", O, CK, words=["--bag-batch"], usage=True),
    case("mil-bag-batch-negative", *MIL, "--bag-batch", "-4", O, CK, words=["--bag-batch"], usage=True),
    case("mil-attention-dim-zero", *MIL, "--attention-dim", "0", O, CK, words=["--attention-dim"], usage=True),
    case("mil-attention-dim-beyond-the-machine", *MIL, "--attention-dim", "1000000000000", O, CK,
         words=["--attention-dim"], usage=True),
    case("mil-ema-above-1", *MIL, "--ema", "1.5", O, CK, words=["--ema"]),
    case("mil-ema-nan", *MIL, "--ema", "nan", O, CK, words=["--ema"]),
    case("mil-lr-nan", *MIL, "--lr", "nan", O, CK, words=["--lr"], usage=True),
    case("mil-lr-inf", *MIL, "--lr", "inf", O, CK, words=["--lr"]),
    case("mil-warmup-nan", *MIL, "--warmup-epochs", "nan", O, CK, words=["--warmup-epochs"], usage=True),
    case("mil-val-more-than-bags", *MIL, "--val", "1000", O, CK, words=["--val"]),
    case("mil-init-label-folder", *MIL, "--init", "{labels}", O, CK, words=["{labels}"]),
    case("mil-init-detector", *MIL, "--init", "{detector}", O, CK, words=["{detector}"]),
    case("mil-init-wsddn", *MIL, "--init", "{wsddn}", O, CK, words=["{wsddn}"]),
    case("mil-init-text", *MIL, "--init", "{text}", O, CK, words=["{text}"]),
    case("mil-data-scenes", *MIL, "--data", "scenes:digits", O, CK, words=["scenes:digits"]),
    case("mil-data-coco", *MIL, "--data", "coco:{coco}", O, CK, words=["coco:"]),
    case("mil-output-is-a-folder", *MIL, O, "{folder}", "--force", words=["{folder}"]),
    # ---- wsddn ----------------------------------------------------------------------------------------------
    case("wsddn-detector-arch", *WS, "--arch", "frcnn-cnn-s", O, CK, words=["frcnn-cnn-s"]),
    case("wsddn-scenes-beyond-the-machine", *WS, "--scenes", "1000000000000", O, CK, words=["--scenes"]),
    case("wsddn-test-scenes-beyond-the-machine", *WS, "--test-scenes", "1000000000000", O, CK,
         words=["--test-scenes"]),
    case("wsddn-large-canvas-beyond-memory", *WS, "--canvas", "2048", "--scenes", "100000", O, CK,
         words=["--scenes"]),
    case("wsddn-scenes-negative", *WS, "--scenes", "-3", O, CK, words=["--scenes"]),
    case("wsddn-canvas-zero", *WS, "--canvas", "0", O, CK, words=["--canvas"]),
    case("wsddn-object-size-negative", *WS, "--object-size", "-4,8", O, CK, words=["--object-size"]),
    case("wsddn-object-size-not-numbers", *WS, "--object-size", "big,bigger", O, CK, words=["--object-size"]),
    case("wsddn-objects-zero", *WS, "--objects", "0,0", O, CK, words=["--objects"]),
    case("wsddn-objects-beyond-the-machine", *WS, "--objects", "1,1000000000000", "--object-size", "1,2", O, CK,
         words=["--objects"]),
    case("wsddn-max-overlap-nan", *WS, "--max-overlap", "nan", O, CK, words=["--max-overlap"]),
    case("wsddn-proposal-stride-zero", *WS, "--proposal-stride", "0", O, CK, words=["--proposal-stride"]),
    case("wsddn-proposal-stride-nan", *WS, "--proposal-stride", "nan", O, CK, words=["--proposal-stride"]),
    case("wsddn-proposal-stride-above-1", *WS, "--proposal-stride", "2", O, CK, words=["--proposal-stride"]),
    case("wsddn-proposal-ratios-negative", *WS, "--proposal-ratios", "-1,1", O, CK, words=["--proposal-ratios"]),
    case("wsddn-proposal-sizes-above-1", *WS, "--proposal-sizes", "0.5,2", O, CK, words=["--proposal-sizes"]),
    case("wsddn-proposal-sizes-not-numbers", *WS, "--proposal-sizes", "a,b", O, CK, words=["--proposal-sizes"]),
    case("wsddn-roi-zero", *WS, "--roi", "0", O, CK, words=["--roi"]),
    case("wsddn-roi-beyond-the-machine", *WS, "--roi", "1000000", O, CK, words=["--roi"]),
    case("wsddn-hidden-zero", *WS, "--hidden", "0", O, CK, words=["--hidden"]),
    case("wsddn-hidden-beyond-the-machine", *WS, "--hidden", "1000000000000", O, CK, words=["--hidden"]),
    case("wsddn-context-negative", *WS, "--context", "-1", O, CK, words=["--context"]),
    case("wsddn-spatial-nan", *WS, "--spatial", "nan", O, CK, words=["--spatial"]),
    case("wsddn-vote-above-1", *WS, "--vote", "2", O, CK, words=["--vote"]),
    case("wsddn-refine-negative", *WS, "--refine", "-1", O, CK, words=["--refine"]),
    case("wsddn-refine-beyond-the-machine", *WS, "--refine", "1000000000", O, CK, words=["--refine"]),
    case("wsddn-init-mil", *WS, "--init", "{mil}", O, CK, words=["{mil}"]),
    case("wsddn-init-box-folder", *WS, "--init", "{boxes}", O, CK, words=["{boxes}"]),
    case("wsddn-init-detector", *WS, "--init", "{detector}", O, CK, words=["{detector}"]),
    case("wsddn-data-bagfolder", *WS, "--data", "bagfolder:{bagfolder}", O, CK, words=["bagfolder"]),
    case("wsddn-data-label-folder", *WS, "--data", "{labels}", O, CK, words=["{labels}"]),
    # ---- semi -----------------------------------------------------------------------------------------------
    case("semi-detector-arch", *SEMI, "--arch", "frcnn-cnn-s", O, CK, words=["frcnn-cnn-s"]),
    case("semi-data-scenes", *SEMI, "--data", "scenes:digits", O, CK, words=["scenes:digits"]),
    case("semi-data-bagfolder", *SEMI, "--data", "bagfolder:{bagfolder}", O, CK, words=["bagfolder"]),
    case("semi-mu-zero", *SEMI, "--mu", "0", O, CK, words=["--mu"]),
    case("semi-mu-negative", *SEMI, "--mu", "-2", O, CK, words=["--mu"]),
    case("semi-mu-beyond-the-machine", *SEMI, "--mu", "1000000000000", O, CK, words=["--mu"]),
    case("semi-unlabeled-weight-nan", *SEMI, "--unlabeled-weight", "nan", O, CK, words=["--unlabeled-weight"]),
    case("semi-unlabeled-weight-negative", *SEMI, "--unlabeled-weight", "-1", O, CK, words=["--unlabeled-weight"]),
    case("semi-threshold-nan", *SEMI, "--threshold", "nan", O, CK, words=["--threshold"]),
    case("semi-lr-nan", *SEMI, "--lr", "nan", O, CK, words=["--lr"], usage=True),
    case("semi-ema-negative", *SEMI, "--ema", "-0.5", O, CK, words=["--ema"]),
    case("semi-labeled-per-class-leaves-no-unlabeled", *SEMI, "--labeled-per-class", "1000000", O, CK,
         words=["1000000"]),
    case("semi-init-detector", *SEMI, "--init", "{detector}", O, CK, words=["{detector}"]),
    case("semi-init-mil", *SEMI, "--init", "{mil}", O, CK, words=["{mil}"]),
    case("semi-init-label-folder", *SEMI, "--init", "{labels}", O, CK, words=["{labels}"]),
    case("semi-init-empty-file", *SEMI, "--init", "{empty}", O, CK, words=["{empty}"]),
    # ---- pretrain -------------------------------------------------------------------------------------------
    case("pretrain-detector-arch", *PRE, "--arch", "frcnn-cnn-s", O, CK, words=["frcnn-cnn-s"]),
    case("pretrain-data-scenes", *PRE, "--data", "scenes:digits", O, CK, words=["scenes:digits"]),
    case("pretrain-data-bagfolder", *PRE, "--data", "bagfolder:{bagfolder}", O, CK, words=["bagfolder"]),
    case("pretrain-temperature-zero", *PRE, "--task", "simclr", "--temperature", "0", O, CK, words=["--temperature"]),
    case("pretrain-temperature-nan", *PRE, "--task", "simclr", "--temperature", "nan", O, CK,
         words=["--temperature"]),
    case("pretrain-permutations-zero", *PRE, "--task", "jigsaw", "--resize", "24", "--permutations", "0", O, CK,
         words=["--permutations"]),
    case("pretrain-permutations-more-than-exist", *PRE, "--task", "jigsaw", "--resize", "24", "--permutations",
         "1000000", O, CK, words=["--permutations"]),
    case("pretrain-crop-scale-above-1", *PRE, "--task", "simclr", "--crop-scale", "2", O, CK, words=["--crop-scale"]),
    case("pretrain-color-jitter-prob-negative", *PRE, "--task", "simclr", "--color-jitter-prob", "-0.5", O, CK,
         words=["--color-jitter-prob"]),
    case("pretrain-blur-prob-nan", *PRE, "--task", "simclr", "--blur-prob", "nan", O, CK, words=["--blur-prob"]),
    case("pretrain-head-width-beyond-the-machine", *PRE, "--head-width", "1000000000000", O, CK,
         words=["--head-width"], usage=True),
    case("pretrain-resize-beyond-memory", *PRE, "--task", "simclr", "--resize", "2048", O, CK, words=["--resize"]),
    case("pretrain-patch-size-beyond-the-image", *PRE, "--task", "jigsaw", "--resize", "24", "--patch-size",
         "100000", O, CK, words=["--patch-size"], usage=True),
    # ---- pack -----------------------------------------------------------------------------------------------
    case("pack-output-is-the-source", "pack", "{src}", O, "{src}", words=["{src}"]),
    case("pack-output-is-the-source-forced", "pack", "{src}", O, "{src}", "--force", words=["{src}"]),
    case("pack-output-inside-the-source", "pack", "{src}", O, "{src}/shards", words=["{src}"]),
    case("pack-source-inside-the-output", "pack", "{nested_src}", O, "{tmp}/outer", "--force", words=["outer"]),
    case("pack-key-collision", "pack", "{collide}", O, "{tmp}/packed", words=["cat"]),
    case("pack-key-collision-over-an-earlier-pack", "pack", "{collide}", O, "{earlier_pack}",
         words=["{earlier_pack}"]),
    case("pack-key-collision-forced-over-an-earlier-pack", "pack", "{collide}", O, "{earlier_pack}", "--force",
         words=["cat"]),
    case("pack-output-is-a-file", "pack", "{src}", O, "{text}", words=["{text}"]),
    case("pack-output-is-a-label-folder", "pack", "{src}", O, "{labels_copy}", "--force", words=["{labels_copy}"]),
    case("pack-source-missing", "pack", "{tmp}/nowhere", O, "{tmp}/packed", words=["nowhere"]),
    case("pack-source-empty", "pack", "{folder}", O, "{tmp}/packed", words=["{folder}"]),
    case("pack-source-without-images", "pack", "{no_images}", O, "{tmp}/packed", words=["{no_images}"]),
    case("pack-source-is-a-file", "pack", "{text}", O, "{tmp}/packed", words=["{text}"]),
    case("pack-source-is-a-checkpoint", "pack", "{teacher}", O, "{tmp}/packed", words=["{teacher}"]),
    case("pack-source-is-tar-shards", "pack", "{shards}", O, "{tmp}/packed", words=["{shards}"]),
    case("pack-output-parent-missing", "pack", "{src}", O, "{tmp}/missing/packed", words=["missing"]),
    case("pack-shard-size-zero", "pack", "{src}", "--shard-size", "0", O, "{tmp}/packed", words=["--shard-size"],
         usage=True),
    case("pack-shard-size-negative", "pack", "{src}", "--shard-size", "-1", O, "{tmp}/packed",
         words=["--shard-size"], usage=True),
    case("pack-shard-size-not-a-number", "pack", "{src}", "--shard-size", "many", O, "{tmp}/packed",
         words=["--shard-size"], usage=True),
    # ---- plot: metrics logs dpl did not write in that shape, and artifacts of the wrong kind --------------------
    case("plot-curves-epoch-without-a-metric", "plot", "curves", "{log_no_metric}", O, FIG,
         words=["{log_no_metric}", "line 2"]),
    case("plot-curves-dict-for-a-number", "plot", "curves", "{log_dict}", O, FIG, words=["{log_dict}", "line 2"]),
    case("plot-curves-list-for-a-number", "plot", "curves", "{log_list}", O, FIG, words=["{log_list}", "line 2"]),
    case("plot-curves-string-for-a-number", "plot", "curves", "{log_string}", O, FIG,
         words=["{log_string}", "line 2"]),
    case("plot-curves-nan-literal", "plot", "curves", "{log_nan}", O, FIG, words=["{log_nan}", "line 2"]),
    case("plot-curves-infinity-literal", "plot", "curves", "{log_inf}", O, FIG, words=["{log_inf}", "line 2"]),
    case("plot-curves-epoch-not-a-number", "plot", "curves", "{log_epoch_text}", O, FIG,
         words=["{log_epoch_text}", "line 2"]),
    case("plot-curves-line-is-an-array", "plot", "curves", "{log_array}", O, FIG, words=["{log_array}", "line 2"]),
    case("plot-curves-empty-log", "plot", "curves", "{log_empty}", O, FIG, words=["{log_empty}"]),
    case("plot-curves-only-step-records", "plot", "curves", "{log_steps}", O, FIG, words=["{log_steps}"]),
    case("plot-curves-binary-log", "plot", "curves", "{log_binary}", O, FIG, words=["{log_binary}"]),
    case("plot-curves-log-not-utf8", "plot", "curves", "{log_latin1}", O, FIG, words=["{log_latin1}", "line 2"]),
    case("plot-curves-huge-single-line", "plot", "curves", "{log_huge}", O, FIG, words=["{log_huge}", "line 2"]),
    case("plot-curves-deeply-nested-line", "plot", "curves", "{log_deep}", O, FIG, words=["{log_deep}", "line 2"]),
    case("plot-curves-run-without-history", "plot", "curves", "{log}", "{backbone}", O, FIG, words=["{backbone}"]),
    case("plot-curves-label-folder", "plot", "curves", "{labels}", O, FIG, words=["{labels}"]),
    case("plot-curves-text-file", "plot", "curves", "{text}", O, FIG, words=["{text}"]),
    case("plot-curves-checkpoint-history-of-strings", "plot", "curves", "{ckpt_history_strings}", O, FIG,
         words=["{ckpt_history_strings}"]),
    case("plot-reliability-detector", "plot", "reliability", "{detector}", "--device", "cpu", O, FIG,
         words=["{detector}"]),
    case("plot-reliability-mil", "plot", "reliability", "{mil}", "--device", "cpu", O, FIG, words=["{mil}"]),
    case("plot-confusion-wsddn", "plot", "confusion", "{wsddn}", "--device", "cpu", O, FIG, words=["{wsddn}"]),
    case("plot-confusion-detector", "plot", "confusion", "{detector}", "--device", "cpu", O, FIG,
         words=["{detector}"]),
    case("plot-labels-box-folder", "plot", "labels", "{boxes}", O, FIG, words=["{boxes}"]),
    case("plot-labels-empty-file", "plot", "labels", "{empty}", O, FIG, words=["{empty}"]),
    case("plot-lineage-label-folder", "plot", "lineage", "{labels}", O, FIG, words=["{labels}"]),
    case("plot-lineage-metrics-log", "plot", "lineage", "{log}", O, FIG, words=["{log}"]),
    case("plot-probe-detector", "plot", "probe", "{detector}", "--device", "cpu", O, FIG, words=["{detector}"]),
    case("plot-probe-mil", "plot", "probe", "{mil}", "--device", "cpu", O, FIG, words=["{mil}"]),
    case("plot-probe-layer-unknown", "plot", "probe", "{teacher}", "--layer", "stages.9", "--device", "cpu", O, FIG,
         words=["stages.9"]),
    case("plot-probe-batch-size-zero", "plot", "probe", "{teacher}", "--batch-size", "0", O, FIG,
         words=["--batch-size"], usage=True),
    case("plot-bag-wsddn", "plot", "bag", "{wsddn}", "--bag", "0", "--device", "cpu", O, FIG, words=["{wsddn}"]),
    case("plot-bag-detector", "plot", "bag", "{detector}", "--bag", "0", "--device", "cpu", O, FIG,
         words=["{detector}"]),
    case("plot-bag-label-folder", "plot", "bag", "{labels}", "--bag", "0", "--device", "cpu", O, FIG,
         words=["{labels}"]),
    case("plot-bag-batch-size-zero", "plot", "bag", "{mil}", "--bag", "0", "--batch-size", "0", O, FIG,
         words=["--batch-size"], usage=True),
    case("plot-bag-data-scenes", "plot", "bag", "{mil}", "--bag", "0", "--data", "scenes:digits", "--device", "cpu",
         O, FIG, words=["scenes:digits"]),
    # ---- report ---------------------------------------------------------------------------------------------
    case("report-metrics-log", "report", "{log}", O, "{tmp}/r.html", words=["{log}"]),
    case("report-text-file", "report", "{text}", O, "{tmp}/r.html", words=["{text}"]),
    case("report-empty-file", "report", "{empty}", O, "{tmp}/r.html", words=["{empty}"]),
    case("report-detector", "report", "{detector}", "--device", "cpu", O, "{tmp}/r.html", words=["{detector}"]),
    case("report-mil", "report", "{mil}", "--device", "cpu", O, "{tmp}/r.html", words=["{mil}"]),
    case("report-wsddn", "report", "{wsddn}", "--device", "cpu", O, "{tmp}/r.html", words=["{wsddn}"]),
    case("report-box-folder", "report", "{boxes}", "--device", "cpu", O, "{tmp}/r.html", words=["{boxes}"]),
    case("report-label-shard-file", "report", "{shard}", O, "{tmp}/r.html", words=["{shard}"]),
    case("report-folder-of-other-tasks-only", "report", "{other_tasks}", "--device", "cpu", O, "{tmp}/r.html",
         words=["{other_tasks}"]),
    case("report-output-is-its-input", "report", "{teacher_copy}", "--device", "cpu", O, "{teacher_copy}",
         "--force", words=["{teacher_copy}"]),
    case("report-unknown-device", "report", "{teacher}", "--device", "tpu", O, "{tmp}/r.html", words=["tpu"]),
    # ---- --config files -------------------------------------------------------------------------------------
    case("config-mil-nested-5000-levels", *MIL, "--config", "{deep_yaml}", O, CK, words=["{deep_yaml}"]),
    case("config-wsddn-nested-5000-mappings", *WS, "--config", "{deep_yaml_dict}", O, CK,
         words=["{deep_yaml_dict}"]),
    case("config-semi-not-utf8", *SEMI, "--config", "{latin1_yaml}", O, CK, words=["{latin1_yaml}"]),
    case("config-pretrain-binary", *PRE, "--config", "{binary_yaml}", O, CK, words=["{binary_yaml}"]),
    case("config-semi-unknown-key", *SEMI, "--config", "{unknown_key_yaml}", O, CK, words=["bogus"]),
    case("config-wsddn-key-of-another-command", *WS, "--config", "{semi_key_yaml}", O, CK, words=["mu"]),
    case("config-mil-list-at-top", *MIL, "--config", "{list_yaml}", O, CK, words=["{list_yaml}"]),
    case("config-pretrain-wrong-type", *PRE[:1], "--arch", "cnn-s", "--device", "cpu", "--config",
         "{wrong_type_yaml}", O, CK, words=["epochs"], usage=True),
    case("config-semi-mapping-for-a-number", *SEMI, "--config", "{dict_value_yaml}", O, CK, words=["threshold"],
         usage=True),
    case("config-distill-list-for-a-number", "distill", "--labels", "{labels}", "--arch", "cnn-s", "--device", "cpu",
         "--config", "{list_value_yaml}", O, CK, words=["epochs"], usage=True),
    case("config-mil-nan-for-a-rate", *MIL, "--config", "{nan_value_yaml}", O, CK, words=["lr"], usage=True),
    case("config-wsddn-is-a-folder", *WS, "--config", "{folder}", O, CK, words=["{folder}"]),
    case("config-mil-missing", *MIL, "--config", "{tmp}/none.yaml", O, CK, words=["none.yaml"]),
    case("config-teach-python-tag", *TEACH, "--config", "{python_tag_yaml}", O, CK, words=["{python_tag_yaml}"]),
    case("config-hint-nested-5000-levels", "hint", "--teacher", "{teacher}", "--config", "{deep_yaml}", O, CK,
         words=["{deep_yaml}"]),
    case("config-label-not-utf8", "label", "{teacher}", "--config", "{latin1_yaml}", O, "{tmp}/l",
         words=["{latin1_yaml}"]),
    # ---- tar: shards ----------------------------------------------------------------------------------------
    case("tar-compressed-only", *TEACH, "--data", "tar:{tar_gz_only}", O, CK, words=["{tar_gz_only}"]),
    case("tar-gzip-named-tar", *TEACH, "--data", "tar:{tar_gzip_named_tar}", O, CK, words=["a.tar"]),
    case("tar-empty-archive", *TEACH, "--data", "tar:{tar_empty}", O, CK, words=["{tar_empty}"]),
    case("tar-zero-byte-file", *TEACH, "--data", "tar:{tar_zero_bytes}", O, CK, words=["a.tar"]),
    case("tar-text-file-named-tar", *TEACH, "--data", "tar:{tar_text}", O, CK, words=["a.tar"]),
    case("tar-no-images", *TEACH, "--data", "tar:{tar_no_images}", O, CK, words=["{tar_no_images}"]),
    case("tar-only-a-symlink-member", *TEACH, "--data", "tar:{tar_symlink}", O, CK, words=["{tar_symlink}"]),
    case("tar-cls-not-an-integer", *TEACH, "--data", "tar:{tar_cls_text}", O, CK, words=["a.tar"]),
    case("tar-cls-negative", *TEACH, "--data", "tar:{tar_cls_negative}", O, CK, words=["a.tar"]),
    case("tar-cls-beyond-the-machine", *TEACH, "--data", "tar:{tar_cls_huge}", O, CK, words=["{tar_cls_huge}"]),
    case("tar-classes-txt-names-too-few", *TEACH, "--data", "tar:{tar_few_classes}", O, CK, words=["classes.txt"]),
    case("tar-classes-txt-not-utf8", *TEACH, "--data", "tar:{tar_classes_latin1}", O, CK, words=["classes.txt"]),
    case("tar-no-image-decodes", *TEACH, "--data", "tar:{tar_garbage}", O, CK, words=["{tar_garbage}"]),
    case("tar-key-in-two-shards", *TEACH, "--data", "tar:{tar_key_twice}", O, CK, words=["{tar_key_twice}"]),
    case("tar-path-is-a-text-file", *TEACH, "--data", "tar:{text}", O, CK, words=["{text}"]),
    case("tar-split-missing", *TEACH, "--data", "tar:{shards}:test", O, CK, words=["test"]),
    case("tar-semi-on-a-pool-without-labels", *SEMI, "--data", "tar:{tar_pool}", O, CK, words=["{tar_pool}"]),
    # ---- coco: JSON -----------------------------------------------------------------------------------------
    case("coco-nested-5000-lists", *WSC, "--data", "coco:{coco_deep_list}", O, CK, words=["annotations.json"]),
    case("coco-nested-5000-objects", *WSC, "--data", "coco:{coco_deep_dict}", O, CK, words=["annotations.json"]),
    case("coco-detector-nested-5000-lists", *DET, "--data", "coco:{coco_deep_list}", O, CK,
         words=["annotations.json"]),
    case("coco-not-utf8", *WSC, "--data", "coco:{coco_latin1}", O, CK, words=["annotations.json"]),
    case("coco-json-is-a-list", *WSC, "--data", "coco:{coco_list}", O, CK, words=["annotations.json"]),
    case("coco-truncated-json", *WSC, "--data", "coco:{coco_truncated}", O, CK, words=["annotations.json"]),
    case("coco-empty-file", *WSC, "--data", "coco:{coco_empty}", O, CK, words=["annotations.json"]),
    case("coco-image-folder-missing", *WSC, "--data", "coco:{coco_no_images}", O, CK, words=["annotations.json"]),
    case("coco-annotations-of-missing-images", *WSC, "--data", "coco:{coco_unknown_images}", O, CK,
         words=["annotations.json"]),
    case("coco-boxes-of-negative-size", *WSC, "--data", "coco:{coco_negative_boxes}", O, CK,
         words=["annotations.json"]),
    case("coco-unknown-category-ids", *WSC, "--data", "coco:{coco_unknown_categories}", O, CK,
         words=["annotations.json"]),
    case("coco-boxes-of-strings", *WSC, "--data", "coco:{coco_string_boxes}", O, CK, words=["annotations.json"]),
    case("coco-images-not-a-list", *WSC, "--data", "coco:{coco_images_dict}", O, CK, words=["annotations.json"]),
    case("coco-declared-size-beyond-the-machine", *WSC, "--data", "coco:{coco_huge_size}", O, CK,
         words=["annotations.json"]),
    case("coco-file-name-outside-the-folder", *WSC, "--data", "coco:{coco_escape}", O, CK,
         words=["annotations.json"]),
    case("coco-path-is-an-image", *WSC, "--data", "coco:{coco}/0.png", O, CK, words=["0.png"]),
    case("coco-classifier-arch", *TEACH, "--data", "coco:{coco}", O, CK, words=["cnn-s"]),
    case("coco-semi", *SEMI, "--data", "coco:{coco}", O, CK, words=["coco:"]),
    # ---- scenes: and bagfolder: -----------------------------------------------------------------------------
    case("scenes-unknown-source", *DET, *SCN, "--data", "scenes:nope", O, CK, words=["nope"]),
    case("scenes-of-scenes", *DET, *SCN, "--data", "scenes:scenes:digits", O, CK, words=["scenes:"]),
    case("scenes-of-coco", *DET, *SCN, "--data", "scenes:coco:{coco}", O, CK, words=["coco:"]),
    case("scenes-of-a-pool-without-labels", *DET, *SCN, "--data", "scenes:imagefolder:{pool}", O, CK,
         words=["{pool}"]),
    case("scenes-zero", *DET, *SCN, "--scenes", "0", O, CK, words=["--scenes"]),
    case("scenes-test-negative", *DET, *SCN, "--test-scenes", "-1", O, CK, words=["--test-scenes"]),
    case("scenes-beyond-the-machine", *DET, *SCN, "--scenes", "1000000000000", O, CK, words=["--scenes"]),
    case("scenes-canvas-smaller-than-objects", *DET, *SCN, "--canvas", "8", O, CK, words=["--canvas"]),
    case("scenes-objects-reversed", *DET, *SCN, "--objects", "3,1", O, CK, words=["--objects"]),
    case("scenes-max-overlap-negative", *DET, *SCN, "--max-overlap", "-0.5", O, CK, words=["--max-overlap"]),
    case("scenes-scale-jitter-nan", *DET, *SCN, "--scale-jitter", "nan,1", O, CK, words=["--scale-jitter"]),
    case("scenes-scale-jitter-zero", *DET, *SCN, "--scale-jitter", "0,0", O, CK, words=["--scale-jitter"]),
    case("bagfolder-missing", *MILF, "--data", "bagfolder:{tmp}/nowhere", O, CK, words=["nowhere"]),
    case("bagfolder-labels-csv-not-utf8", *MILF, "--data", "bagfolder:{bags_latin1}", O, CK, words=["labels.csv"]),
    case("bagfolder-labels-csv-binary", *MILF, "--data", "bagfolder:{bags_binary}", O, CK, words=["labels.csv"]),
    case("bagfolder-labels-csv-three-columns", *MILF, "--data", "bagfolder:{bags_columns}", O, CK,
         words=["labels.csv"]),
    case("bagfolder-labels-csv-is-a-folder", *MILF, "--data", "bagfolder:{bags_csv_folder}", O, CK,
         words=["labels.csv"]),
    case("bagfolder-bag-is-a-file", *MILF, "--data", "bagfolder:{bags_file_bag}", O, CK, words=["b0"]),
    case("bagfolder-bag-outside-the-folder", *MILF, "--data", "bagfolder:{bags_escape}", O, CK, words=["../"]),
    case("bagfolder-header-only", *MILF, "--data", "bagfolder:{bags_header_only}", O, CK, words=["labels.csv"]),
    case("bagfolder-all-bags-positive", *MILF, "--data", "bagfolder:{bags_all_positive}", O, CK,
         words=["bags-all-positive", "positive"]),
    case("bagfolder-instances-csv-not-utf8", *MILF, "--data", "bagfolder:{bags_instances_latin1}", O, CK,
         words=["instances.csv"]),
    case("bagfolder-target-class", *MILF, "--data", "bagfolder:{bagfolder}", "--target-class", "1", O, CK,
         words=["--target-class"]),
    case("bagfolder-teach", *TEACH, "--data", "bagfolder:{bagfolder}", O, CK, words=["bagfolder"]),
    # ---- the older commands given artifacts or architectures of another task ----------------------------------
    case("cross-teach-detector-arch", *TEACH, "--arch", "frcnn-cnn-s", O, CK, words=["frcnn-cnn-s"]),
    case("cross-teach-retinanet-arch-on-images", *TEACH, "--data", "imagefolder:{images}", "--arch",
         "retinanet-cnn-s", O, CK, words=["retinanet-cnn-s"]),
    case("cross-teach-init-detector", *TEACH, "--init", "{detector}", O, CK, words=["{detector}"]),
    case("cross-teach-init-box-folder", *TEACH, "--init", "{boxes}", O, CK, words=["{boxes}"]),
    case("cross-hint-detector-arch", "hint", "--teacher", "{teacher}", "--arch", "frcnn-cnn-s", *FAST, O, CK,
         words=["frcnn-cnn-s"]),
    case("cross-hint-teacher-mil", "hint", "--teacher", "{mil}", "--arch", "cnn-s", *FAST, O, CK, words=["{mil}"]),
    case("cross-hint-teacher-wsddn", "hint", "--teacher", "{wsddn}", "--arch", "cnn-s", *FAST, O, CK,
         words=["{wsddn}"]),
    case("cross-distill-detector-arch-on-class-labels", "distill", "--labels", "{labels}", "--arch", "frcnn-cnn-s",
         *FAST, O, CK, words=["frcnn-cnn-s"]),
    case("cross-distill-classifier-arch-on-box-labels", "distill", "--labels", "{boxes}", "--arch", "cnn-s",
         *FAST, O, CK, words=["cnn-s"]),
    case("cross-distill-teacher-mil", "distill", "--teacher", "{mil}", "--arch", "cnn-s", *FAST, O, CK,
         words=["{mil}"]),
    case("cross-distill-teacher-detector-on-digits", "distill", "--teacher", "{detector}", "--data", "digits",
         "--arch", "cnn-s", *FAST, O, CK, words=["digits"]),
    case("cross-distill-classifier-on-scenes", "distill", "--teacher", "{teacher}", "--data", "scenes:digits",
         "--arch", "cnn-s", *FAST, O, CK, words=["scenes:digits"]),
    case("cross-label-box-folder-as-teacher", "label", "{boxes}", O, "{tmp}/l", words=["{boxes}"]),
    case("cross-label-detector-on-digits", "label", "{detector}", "--data", "digits", O, "{tmp}/l",
         words=["digits"]),
    case("cross-label-mil-ensemble", "label", "{teacher}", "--ensemble", "{mil}", O, "{tmp}/l", words=["{mil}"]),
    case("cross-label-wsddn-on-digits", "label", "{wsddn}", "--data", "digits", O, "{tmp}/l", words=["digits"]),
    case("cross-eval-detector-on-digits", "eval", "{detector}", "--data", "digits", words=["digits"]),
    case("cross-eval-mil-on-scenes", "eval", "{mil}", "--data", "scenes:digits", words=["scenes:digits"]),
    case("cross-eval-wsddn-on-a-bagfolder", "eval", "{wsddn}", "--data", "bagfolder:{bagfolder}", "--device", "cpu",
         words=["bagfolder"]),
    case("cross-eval-detector-and-mil", "eval", "{detector}", "{mil}", words=["{mil}"]),
    case("cross-eval-box-folder-and-label-folder", "eval", "{boxes}", "{labels}", words=["{boxes}"]),
    case("cross-info-metrics-log", "info", "{log}", words=["{log}"]),
]


# ---- the inputs ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Good artifacts made by dpl itself, as small as will do (a refusal needs a valid artifact, not a good one):
    a digits classifier with its metrics log and its label folder, a detector on scenes with its box label folder,
    a MIL model, a WSDDN model, a backbone without history, a folder of images and its tar shards."""
    root = tmp_path_factory.mktemp("refusals")
    made = {"teacher": root / "t.safetensors", "log": root / "t.metrics.jsonl", "labels": root / "labels",
            "detector": root / "det.safetensors", "boxes": root / "boxes", "mil": root / "mil.safetensors",
            "wsddn": root / "wsddn.safetensors", "backbone": root / "b0.safetensors", "images": root / "images",
            "shards": root / "shards"}
    write_imagefolder(made["images"], size=8, per_class=3, splits=(None,))
    for args in (
        ("teach", "--arch", "cnn-s", "--epochs", "1", "--batch-size", "256", "--device", "cpu", O, made["teacher"]),
        ("label", made["teacher"], "--device", "cpu", O, made["labels"]),
        ("teach", *SCN, "--arch", "frcnn-cnn-s", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
         O, made["detector"]),
        ("label", made["detector"], "--device", "cpu", O, made["boxes"]),
        (*MIL, O, made["mil"]),
        (*WS, O, made["wsddn"]),
        ("pretrain", "--arch", "cnn-s", "--epochs", "0", "--device", "cpu", O, made["backbone"]),
        ("pack", made["images"], "--shard-size", "4", O, made["shards"]),
    ):
        r = dpl(*args)
        assert r.code == 0, r
    assert made["log"].is_file()
    made["shard"] = next(made["labels"].glob("shard-*.safetensors"))
    made["root"] = root
    SHARED.update(made)
    return made


SHARED: dict[str, Path] = {}      # the shared artifacts, for the makers that copy one


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _png(size=(8, 8), value=90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "PNG")
    return buf.getvalue()


def _tar(folder: Path, members, name="a.tar") -> Path:
    """A folder holding one plain tar shard of (name, payload) members; a bytes name is written raw."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / name, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for member, payload in members:
            info = tarfile.TarInfo(os.fsdecode(member) if isinstance(member, bytes) else member)
            if payload is None:                       # a symlink
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/hostname"
                tar.addfile(info)
                continue
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return folder


def _labeled_members(n=4, classes=2):
    return [m for i in range(n) for m in ((f"k{i}.png", _png(value=40 * i)), (f"k{i}.cls", str(i % classes).encode()))]


_GOOD = json.dumps({"event": "epoch", "epoch": 1, "step": 5, "lr": 0.1, "loss": 2.0, "ce": 2.0, "acc": 0.2})


def _log(d: Path, name: str, *lines, raw: bytes | None = None) -> Path:
    """A metrics log whose line 1 is a good epoch record and whose line 2 (on) are `lines` (or `raw` the file)."""
    text = "".join(line + "\n" for line in (_GOOD, *lines))
    return _write(d / f"{name}.metrics.jsonl", raw if raw is not None else text)


def _epoch(**fields) -> str:
    return json.dumps({"event": "epoch", "epoch": 2, "step": 10, "lr": 0.05, "loss": 1.5, "ce": 1.5, "acc": 0.4,
                       **fields})


def _history(d: Path, name: str, history) -> Path:
    """A copy of the shared classifier whose recorded history is `history` (not what dpl writes)."""
    from dpl.core import artifacts

    ckpt = artifacts.load_checkpoint(SHARED["teacher"])
    out = d / f"{name}.safetensors"
    artifacts.save_checkpoint(out, ckpt.build_model(), {**ckpt.meta, "history": history})
    return out


def _coco(d: Path, name: str, doc=None, raw=None, images=True) -> Path:
    """A folder with two 32x24 grey images 0.png, 1.png and annotations.json: `doc` replaces entries of a good
    document, or `raw` (text or bytes) is the file."""
    folder = d / name
    folder.mkdir(parents=True)
    if images:
        for i in range(2):
            (folder / f"{i}.png").write_bytes(_png((32, 24), value=80 + 100 * i))
    if raw is None:
        good = {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": 32, "height": 24} for i in range(2)],
                "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": i + 1, "bbox": [2, 2, 10, 10]}
                                for i in range(2)],
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
        raw = json.dumps({**good, **(doc or {})})
    _write(folder / "annotations.json", raw)
    return folder


def _annotations(**fields) -> dict:
    """Both images' annotations, each with `fields` instead of the good ones (a callable: of the image index)."""
    return {"annotations": [{"id": i + 1, "image_id": i + 1, "category_id": i + 1, "bbox": [2, 2, 10, 10],
                             **{k: v(i) if callable(v) else v for k, v in fields.items()}} for i in range(2)]}


def _images(**fields) -> dict:
    return {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": 32, "height": 24,
                        **{k: v(i) if callable(v) else v for k, v in fields.items()}} for i in range(2)]}


def _bags(d: Path, name: str, labels="bag,label\nb0,0\nb1,1\nb2,0\nb3,1\n", instances=None, bags=4) -> Path:
    """A bag folder: bags b0..b3 of two 8x8 PNGs each, and labels.csv (text or bytes) as given."""
    folder = d / name
    for b in range(bags):
        for i in range(2):
            _write(folder / f"b{b}" / f"{i}.png", _png(value=30 * b + 10 * i))
    if labels is not None:
        _write(folder / "labels.csv", labels)
    if instances is not None:
        _write(folder / "instances.csv", instances)
    return folder


def _bag_file(d: Path) -> Path:
    folder = _bags(d, "bags-file-bag")
    shutil.rmtree(folder / "b0")
    (folder / "b0").write_text("not a folder of images\n")
    return folder


def _bag_escape(d: Path) -> Path:
    _bags(d, "elsewhere")          # bags outside the bag folder, reached by ../
    return _bags(d, "bags-escape", labels="bag,label\n../elsewhere/b0,0\n../elsewhere/b1,1\n")


def _no_images(d: Path) -> Path:
    for name in ("cat", "dog"):
        _write(d / "no-images" / name / "notes.txt", "no pictures here\n")
    return d / "no-images"


def _collide(d: Path) -> Path:
    folder = write_imagefolder(d / "collide", size=8, per_class=2, splits=(None,))
    from PIL import Image

    Image.new("L", (8, 8), 7).save(folder / "cat" / "0.jpg")           # cat/0.png and cat/0.jpg: one key
    return folder


def _earlier_pack(d: Path) -> Path:
    src = write_imagefolder(d / "earlier-src", size=8, per_class=2, splits=(None,))
    r = dpl("pack", src, "--shard-size", "3", O, d / "earlier")
    assert r.code == 0, r
    return d / "earlier"


def _nested_src(d: Path) -> Path:
    return write_imagefolder(d / "outer" / "src", size=8, per_class=2, splits=(None,))


def _other_tasks(d: Path) -> Path:
    folder = d / "other-tasks"
    folder.mkdir()
    for key in ("detector", "mil", "wsddn"):
        shutil.copy(SHARED[key], folder / SHARED[key].name)
    return folder


DEEP = 5000

MAKERS = {   # bad inputs, made in the case's own folder when its arguments mention them
    "text": lambda d: _write(d / "notes.txt", "these are not the weights you are looking for\n"),
    "empty": lambda d: _write(d / "empty.safetensors", ""),
    "folder": lambda d: (d / "folder").mkdir() or d / "folder",
    "no_images": _no_images,
    "src": lambda d: write_imagefolder(d / "src", size=8, per_class=2, splits=(None,)),
    "nested_src": _nested_src,
    "collide": _collide,
    "earlier_pack": _earlier_pack,
    "labels_copy": lambda d: Path(shutil.copytree(SHARED["labels"], d / "labels-copy")),
    "teacher_copy": lambda d: Path(shutil.copy(SHARED["teacher"], d / "teacher-copy.safetensors")),
    "other_tasks": _other_tasks,
    "pool": lambda d: write_imagefolder(d / "pool", classes=("",), size=8, per_class=4, splits=(None,)),
    # metrics logs
    "log_no_metric": lambda d: _log(d, "no-metric", json.dumps({"event": "epoch", "epoch": 2, "step": 10})),
    "log_dict": lambda d: _log(d, "dict", _epoch(loss={"mean": 1.5})),
    "log_list": lambda d: _log(d, "list", _epoch(loss=[1.5, 1.4])),
    "log_string": lambda d: _log(d, "string", _epoch(loss="1.5")),
    "log_nan": lambda d: _log(d, "nan", _epoch(loss=float("nan"))),
    "log_inf": lambda d: _log(d, "inf", _epoch(loss=float("inf"))),
    "log_epoch_text": lambda d: _log(d, "epoch-text", _epoch(epoch="two")),
    "log_array": lambda d: _log(d, "array", "[1, 2, 3]"),
    "log_empty": lambda d: _write(d / "empty.metrics.jsonl", ""),
    "log_steps": lambda d: _write(d / "steps.metrics.jsonl", "".join(
        json.dumps({"event": "step", "epoch": 1, "step": s, "lr": 0.1, "loss": 2.0}) + "\n" for s in (10, 20))),
    "log_binary": lambda d: _write(d / "binary.metrics.jsonl", bytes(range(256)) * 64),
    "log_latin1": lambda d: _log(d, "latin1",
                                 raw=(_GOOD + "\n" + _epoch()[:-1] + ', "caf\xe9": 1.0}\n').encode("latin-1")),
    "log_huge": lambda d: _log(d, "huge", _epoch(loss=1.0)[:-1] + ', "pad": "' + "x" * (64 << 20) + '"}'),
    "log_deep": lambda d: _log(d, "deep", _epoch()[:-1] + ', "loss_terms": ' + "[" * DEEP + "]" * DEEP + "}"),
    "ckpt_history_strings": lambda d: _history(d, "history-strings", [{"epoch": "one", "loss": "low", "lr": "x"}]),
    "ckpt_history_dicts": lambda d: _history(d, "history-dicts", [{"epoch": 1, "loss": {"a": [1, 2]}, "lr": 0.1}]),
    "ckpt_history_number": lambda d: _history(d, "history-number", 42),
    # --config files
    "deep_yaml": lambda d: _write(d / "deep.yaml", "epochs: " + "[" * DEEP + "]" * DEEP + "\n"),
    "deep_yaml_dict": lambda d: _write(d / "deep-dict.yaml", "epochs: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n"),
    "latin1_yaml": lambda d: _write(d / "latin1.yaml", b"\xff\xfe epochs: 1\n"),
    "binary_yaml": lambda d: _write(d / "binary.yaml", bytes(range(256)) * 4),
    "unknown_key_yaml": lambda d: _write(d / "unknown.yaml", "epochs: 1\nbogus: 3\n"),
    "semi_key_yaml": lambda d: _write(d / "semi-key.yaml", "mu: 3\n"),
    "list_yaml": lambda d: _write(d / "list.yaml", "- epochs\n- 1\n"),
    "wrong_type_yaml": lambda d: _write(d / "wrong-type.yaml", "epochs: many\n"),
    "dict_value_yaml": lambda d: _write(d / "dict-value.yaml", "threshold: {a: 1}\n"),
    "list_value_yaml": lambda d: _write(d / "list-value.yaml", "epochs: [1, 2]\n"),
    "nan_value_yaml": lambda d: _write(d / "nan-value.yaml", "lr: .nan\n"),
    "python_tag_yaml": lambda d: _write(d / "python-tag.yaml", "epochs: !!python/object/apply:os.getpid []\n"),
    # tar shards
    "tar_gz_only": lambda d: _write(d / "gz" / "a.tar.gz", gzip.compress(
        (_tar(d / "gz-src", _labeled_members()) / "a.tar").read_bytes())).parent,
    "tar_gzip_named_tar": lambda d: _write(d / "gzip-named" / "a.tar", gzip.compress(
        (_tar(d / "gzip-src", _labeled_members()) / "a.tar").read_bytes())).parent,
    "tar_empty": lambda d: _tar(d / "tar-empty", []),
    "tar_zero_bytes": lambda d: _write(d / "zero" / "a.tar", b"").parent,
    "tar_text": lambda d: _write(d / "tar-text" / "a.tar", "a shard, honestly\n" * 100).parent,
    "tar_no_images": lambda d: _tar(d / "tar-no-images", [("k0.txt", b"hello"), ("k1.json", b"{}")]),
    "tar_symlink": lambda d: _tar(d / "tar-symlink", [("k0.png", None)]),
    "tar_cls_text": lambda d: _tar(d / "tar-cls-text", [("k0.png", _png()), ("k0.cls", b"cat"),
                                                        ("k1.png", _png()), ("k1.cls", b"1")]),
    "tar_cls_negative": lambda d: _tar(d / "tar-cls-negative", [("k0.png", _png()), ("k0.cls", b"-1"),
                                                                ("k1.png", _png()), ("k1.cls", b"1")]),
    "tar_cls_huge": lambda d: _tar(d / "tar-cls-huge", [("k0.png", _png()), ("k0.cls", b"0"),
                                                        ("k1.png", _png()), ("k1.cls", b"1000000000000")]),
    "tar_few_classes": lambda d: _write(_tar(d / "tar-few", _labeled_members(6, 3)) / "classes.txt", "a\nb\n").parent,
    "tar_classes_latin1": lambda d: _write(_tar(d / "tar-classes-latin1", _labeled_members()) / "classes.txt",
                                           b"caf\xe9\nth\xe9\n").parent,
    "tar_name_latin1": lambda d: _tar(d / "tar-name-latin1", [(b"caf\xe9.png", _png()), (b"caf\xe9.cls", b"0"),
                                                              ("k1.png", _png()), ("k1.cls", b"1")]),
    "tar_garbage": lambda d: _tar(d / "tar-garbage", [("k0.png", b"not a png"), ("k0.cls", b"0"),
                                                      ("k1.png", b"nor this"), ("k1.cls", b"1")]),
    "tar_key_twice": lambda d: _tar(_tar(d / "tar-twice", _labeled_members(), "a.tar"), _labeled_members(), "b.tar"),
    "tar_pool": lambda d: _tar(d / "tar-pool", [(f"k{i}.png", _png(value=20 * i)) for i in range(6)]),
    # coco
    "coco": lambda d: _coco(d, "coco"),
    "coco_deep_list": lambda d: _coco(d, "coco-deep-list", raw='{"images": ' + "[" * DEEP + "]" * DEEP
                                      + ', "categories": []}'),
    "coco_deep_dict": lambda d: _coco(d, "coco-deep-dict", raw='{"images": [], "categories": [], "x": '
                                      + '{"a": ' * DEEP + "1" + "}" * DEEP + "}"),
    "coco_latin1": lambda d: _coco(d, "coco-latin1", raw=json.dumps(
        {**_images(), **_annotations(), "categories": [{"id": 1, "name": "caf\xe9"}, {"id": 2, "name": "b"}]},
        ensure_ascii=False).encode("latin-1")),
    "coco_list": lambda d: _coco(d, "coco-list", raw="[]"),
    "coco_truncated": lambda d: _coco(d, "coco-truncated", raw='{"images": [{"id": 1, "file_na'),
    "coco_empty": lambda d: _coco(d, "coco-empty", raw=""),
    "coco_no_images": lambda d: _coco(d, "coco-no-images", _images(file_name=lambda i: f"img/{i}.png"),
                                      images=False),
    "coco_unknown_images": lambda d: _coco(d, "coco-unknown-images", _annotations(image_id=lambda i: 98 + i)),
    "coco_negative_boxes": lambda d: _coco(d, "coco-negative-boxes", _annotations(bbox=[20, 20, -10, -10])),
    "coco_unknown_categories": lambda d: _coco(d, "coco-unknown-categories", _annotations(category_id=42)),
    "coco_string_boxes": lambda d: _coco(d, "coco-string-boxes", _annotations(bbox=["a", "b", "c", "d"])),
    "coco_images_dict": lambda d: _coco(d, "coco-images-dict", {"images": {"1": "0.png", "2": "1.png"}}),
    "coco_huge_size": lambda d: _coco(d, "coco-huge-size", {**_images(width=10 ** 12, height=10 ** 12),
                                                            **_annotations(bbox=[2, 2, 10 ** 11, 10 ** 11])}),
    "coco_escape": lambda d: _coco(d, "coco-escape", _images(file_name="../" * 12 + "etc/hostname")),
    # bag folders
    "bagfolder": lambda d: _bags(d, "bags"),
    "bags_latin1": lambda d: _bags(d, "bags-latin1", labels=b"bag,label\nb0,0\nb1,1\ncaf\xe9,0\n"),
    "bags_binary": lambda d: _bags(d, "bags-binary", labels=bytes(range(256)) * 4),
    "bags_columns": lambda d: _bags(d, "bags-columns", labels="bag,label\nb0,0,1\nb1,1,0\n"),
    "bags_csv_folder": lambda d: (_bags(d, "bags-csv-folder", labels=None) / "labels.csv").mkdir() or
    d / "bags-csv-folder",
    "bags_file_bag": _bag_file,
    "bags_escape": _bag_escape,
    "bags_header_only": lambda d: _bags(d, "bags-header-only", labels="bag,label\n"),
    "bags_all_positive": lambda d: _bags(d, "bags-all-positive", labels="bag,label\nb0,1\nb1,1\nb2,1\nb3,1\n"),
    "bags_instances_latin1": lambda d: _bags(d, "bags-instances-latin1", instances=b"b0,0.png,0\nb0,1.png,\xff\n"),
}


class CaseTimeout(BaseException):
    """Raised by the guard's alarm: not an Exception, so that no handler in dpl swallows it."""


def _alarm(signum, frame):
    raise CaseTimeout(f"not refused within {GUARD_S} s: the case started real work")


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run_guarded(*args):
    """dpl(*args) under a time and a memory guard: a case that is not refused and starts real work (or fills
    the memory of a shared machine) fails within GUARD_S seconds or HEADROOM bytes instead of running on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + HEADROOM
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(GUARD_S)
    try:
        if limit > HEADROOM and (soft == resource.RLIM_INFINITY or limit < soft):
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return dpl(*args)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_refused_cleanly(result, words=(), usage=False) -> None:
    """Exit 2, no exception, no traceback, at most 3 lines on stderr (typer's boxed usage errors: any number),
    and each word on stderr."""
    assert result.code == 2, result
    assert result.exception is None, result
    assert "Traceback" not in result.stderr, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result
    if not usage:
        assert len(lines) <= 3, result
    for w in words:
        assert w in result.stderr, (w, result)


def output_of(args: list[str]) -> Path | None:
    for flag in ("-o", "--output"):
        if flag in args:
            return Path(args[args.index(flag) + 1])
    return None


# ---- the corpus ------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _fresh_sources():
    """Sources are cached per process: no case sees data cached by another."""
    from dpl.core import data

    data._load_source.cache_clear()
    yield
    data._load_source.cache_clear()


@pytest.mark.parametrize("args,words,usage", CASES)
def test_bad_input_is_refused_cleanly_and_changes_nothing(shared, tmp_path, monkeypatch, args, words, usage):
    folder = tmp_path / "case"
    folder.mkdir()
    monkeypatch.chdir(folder)
    inputs = Placeholders(shared, folder, MAKERS)
    args = [a.format_map(inputs) for a in args]
    words = [w.format_map(inputs) for w in words]
    out = output_of(args)
    out_existed = out is not None and (out.exists() or out.is_symlink())
    before = listing(shared["root"], folder)
    result = run_guarded(*args)
    assert_refused_cleanly(result, words, usage)
    if out is not None and not out_existed:
        assert not out.exists() and not list(out.parent.glob(out.name + ".*")), f"{out} was written"
    assert listing(shared["root"], folder) == before


GROUPS = {"mil": 20, "wsddn": 20, "semi": 12, "pack": 15, "plot": 15, "report": 10, "pretrain": 8, "config": 12,
          "tar": 12, "coco": 12, "scenes": 6, "bagfolder": 6, "cross": 12}


def test_the_corpus_covers_each_command_and_source():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 160
    counts = {g: sum(i.startswith(g + "-") for i in ids) for g in GROUPS}
    assert all(counts[g] >= n for g, n in GROUPS.items()), counts
    assert counts["scenes"] + counts["bagfolder"] >= 10
    assert sum(counts.values()) == len(ids)              # every case in one group


# ---- cases that may end either way, but never silently ------------------------------------------------------------

def test_a_truncated_tar_shard_is_refused_or_said(tmp_path):
    """A shard cut in the middle of a member: refused naming the shard, or read up to the cut with a line on
    stderr naming the shard and how many members were read. Never silent success."""
    shards = _tar(tmp_path / "cut", _labeled_members(6, 2))
    raw = (shards / "a.tar").read_bytes()
    third_image = raw.index(b"k3.png")             # the header of the fourth image: cut inside its data
    (shards / "a.tar").write_bytes(raw[: third_image + 512 + 20])
    before = listing(tmp_path)
    out = tmp_path / "t.safetensors"
    r = run_guarded(*TEACH, "--data", f"tar:{shards}", O, out)
    assert r.exception is None and "Traceback" not in r.stderr, r
    assert "a.tar" in r.stderr, r
    if r.code == 2:
        assert_refused_cleanly(r, [str(shards / "a.tar")])
        assert not out.exists() and listing(tmp_path) == before
    else:
        assert r.code == 0, r
        said = [line for line in r.stderr.splitlines() if "a.tar" in line]
        assert any(any(ch.isdigit() for ch in line.split("a.tar", 1)[1]) for line in said), r   # how many read


def _no_zero_spread(r, words) -> None:
    assert r.exception is None and "Traceback" not in r.stderr, r
    assert r.code in (0, 2), r
    if r.code == 2:
        assert_refused_cleanly(r, words)
    else:
        assert "± 0.0000" not in r.stdout + r.stderr, r


@pytest.mark.parametrize("extra, words", [((), ["--seeds"]), (("1",), ["1"])], ids=["seeds", "seeds-1"])
def test_eval_seeds_over_one_checkpoint_shows_no_zero_spread(shared, extra, words):
    """--seeds over one checkpoint (`--seeds 1`: a flag, then a path '1'): one seed has no spread to show;
    refused, or never '± 0.0000'."""
    _no_zero_spread(run_guarded("eval", shared["teacher"], "--seeds", *extra, "--device", "cpu"), words)


def test_eval_seeds_over_one_checkpoint_named_twice_shows_no_zero_spread(shared):
    """The same file twice is one run, not two seeds: refused naming it, or no '± 0.0000'."""
    r = run_guarded("eval", shared["teacher"], shared["teacher"], "--seeds", "--device", "cpu")
    _no_zero_spread(r, [str(shared["teacher"])])


@pytest.mark.parametrize("maker", ["ckpt_history_strings", "ckpt_history_dicts", "ckpt_history_number"])
def test_a_report_of_a_checkpoint_whose_history_dpl_did_not_write_refuses_or_says_so(shared, tmp_path, maker):
    """A checkpoint whose recorded history is not what dpl writes: refused naming it, or the page written
    without its curves and a line on stderr naming it. Never silently."""
    ckpt = MAKERS[maker](tmp_path)
    before = listing(shared["root"], tmp_path)
    page = tmp_path / "r.html"
    r = run_guarded("report", ckpt, "--device", "cpu", O, page)
    assert r.exception is None and "Traceback" not in r.stderr, r
    if r.code == 2:
        assert_refused_cleanly(r, [str(ckpt)])
        assert listing(shared["root"], tmp_path) == before
    else:
        assert r.code == 0 and page.exists() and ckpt.name in r.stderr, r


def test_a_tar_member_name_that_is_not_utf8_is_read_as_bytes_or_refused(shared, tmp_path):
    """Member names are bytes, as file names are: read with the name's bytes as the key (as a folder of such
    files is), or refused naming the shard. Never a traceback."""
    shards = MAKERS["tar_name_latin1"](tmp_path)
    out = tmp_path / "t.safetensors"
    r = run_guarded(*TEACH, "--data", f"tar:{shards}", O, out)
    assert r.exception is None and "Traceback" not in r.stderr, r
    if r.code == 2:
        assert_refused_cleanly(r, [str(shards / "a.tar")])
        assert not out.exists()
    else:
        assert r.code == 0 and out.exists(), r


def test_a_log_whose_last_line_was_cut_is_refused_or_skipped_with_its_line_named(tmp_path):
    """A run killed while writing its last record leaves a cut line: refused naming the file and the line, or
    plotted without it with a warning naming the line. Never silently."""
    log = _log(tmp_path, "cut", _epoch()[:25])
    before = listing(tmp_path)
    r = run_guarded("plot", "curves", log, O, tmp_path / "fig")
    assert r.exception is None and "Traceback" not in r.stderr, r
    if r.code == 2:
        assert_refused_cleanly(r, [str(log), "line 2"])
        assert listing(tmp_path) == before
    else:
        assert r.code == 0 and str(log) in r.stderr and "line 2" in r.stderr, r
