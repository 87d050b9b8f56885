"""clipfolder:PATH[:SPLIT]: clips on disk, a folder of frame images or a video file per clip, decoded on demand."""

import numpy as np
import pytest
import torch
from PIL import Image

from dpl.core import DplError
from dpl.core.data import clip_files, images
from dpl.core.data.clips import load_clips

pytestmark = pytest.mark.usefixtures("one_thread")


def encode_test_video(path, frames, fps: float = 10) -> None:
    """uint8 (T, 3, H, W), H and W even -> a video file at `path` (its suffix picks the container): torchcodec's
    encoder where FFmpeg's libraries load, else PyAV's; the test skips where neither can."""
    frames = torch.as_tensor(frames)
    backend = clip_files._available_backend()
    if backend == "torchcodec":
        from torchcodec.encoders import VideoEncoder

        VideoEncoder(frames, frame_rate=fps).to_file(str(path))
    elif backend == "av":
        import av

        with av.open(str(path), "w") as out:
            stream = out.add_stream("mpeg4", rate=round(fps))
            stream.width, stream.height, stream.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(f.permute(1, 2, 0).numpy(), format="rgb24")))
            out.mux(stream.encode())
    else:
        pytest.skip("no video decoder: neither torchcodec's FFmpeg libraries (apt-get install ffmpeg) nor PyAV "
                    "(pip install av) can load")


def frame(value: int, side: int = 12, mark: int = 0) -> np.ndarray:
    """A grey frame of `value` with a white pixel at column `mark` of the first row: every frame distinct."""
    pixels = np.full((side, side), value, dtype=np.uint8)
    pixels[0, mark] = 255
    return pixels


def write_clip(folder, frames: dict, mode: str = "L"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in frames.items():
        Image.fromarray(pixels).convert(mode).save(folder / name)
    return folder


@pytest.fixture
def clips(tmp_path):
    """Three clips of grey PNG frames; their names sort otherwise than they were written."""
    root = tmp_path / "clips"
    write_clip(root / "walk", {f"f{t:02d}.png": frame(10 + 20 * t, mark=t) for t in (4, 0, 3, 1, 2)})
    write_clip(root / "jump", {f"{c}.png": frame(200 - 30 * k, mark=k) for k, c in enumerate("abc")})
    write_clip(root / "sit", {"x1.png": frame(5), "x2.png": frame(6, mark=1)})
    return root


def test_frames_come_back_in_file_name_order_with_their_pixels(clips):
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", "train")
    assert cs.names == ["jump", "sit", "walk"] and cs.lengths.tolist() == [3, 2, 5]
    assert (cs.channels, cs.size) == (1, 12) and cs.labels.tolist() == [-1, -1, -1] and cs.classes == []
    walk = cs.clip(2)
    assert walk.shape == (5, 1, 12, 12) and walk.dtype == torch.uint8
    for t in range(5):
        assert torch.equal(walk[t, 0], torch.from_numpy(frame(10 + 20 * t, mark=t))), t
    picked = cs.frames([2, 0], [[3, 0, 3], [2, 1, 0]])
    assert torch.equal(picked[0], walk[[3, 0, 3]])
    assert [int(picked[1, j, 0, 5, 5]) for j in range(3)] == [140, 170, 200]
    assert torch.equal(cs.subset([2]).clip(0), walk)
    record = cs.record
    assert record["spec"] == f"clipfolder:{clips}:train" and record["split"] == "train" and record["n"] == 3
    assert record["clips"] == "folder" and record["image_size"] == [12, 12] and len(record["fingerprint"]) == 64
    assert load_clips(f"clipfolder:{clips}", "train").record == record             # through clips.load_clips
    smaller = clip_files.read_clip_folder(f"clipfolder:{clips}", "train", size=6, channels=3)
    assert smaller.clip(0).shape == (3, 3, 6, 6)
    write_clip(clips / "walk", {"f05.png": frame(99)})
    assert clip_files.read_clip_folder(f"clipfolder:{clips}", "train").record["fingerprint"] != record["fingerprint"]


def test_split_folders_and_labels_csv(clips, tmp_path):
    (clips / "labels.csv").write_text("clip,label\nwalk,move\njump,move\nsit,rest\n")
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", None)
    assert cs.classes == ["move", "rest"] and cs.labels.tolist() == [0, 1, 0] and not cs.notes
    (clips / "labels.csv").write_text("clip,label\n\nwalk,move\n")
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", None)
    assert cs.labels.tolist() == [-1, -1, 0] and "2 clips have no line" in cs.notes[0]
    root = tmp_path / "split"
    write_clip(root / "train" / "a", {"1.png": frame(1), "2.png": frame(2)})
    write_clip(root / "test" / "b", {"1.png": frame(3)})
    (root / "labels.csv").write_text("clip,label\nb,z\na,y\n")        # one file for both: the same class indices
    train, test = (clip_files.read_clip_folder(f"clipfolder:{root}:{s}", "train") for s in ("train", "test"))
    assert train.classes == test.classes == ["y", "z"] and train.labels.tolist() == [0] and test.labels.tolist() == [1]
    assert test.record["split"] == "test" and test.names == ["b"]
    with pytest.raises(DplError, match="no 'val' sub-folder"):
        clip_files.read_clip_folder(f"clipfolder:{root}", "val")


def refused(spec: str, *words: str, **options):
    with pytest.raises(DplError) as e:
        clip_files.read_clip_folder(spec, "train", **options)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_bad_folders_are_refused_in_one_line(clips, tmp_path):
    refused(f"clipfolder:{tmp_path / 'nowhere'}", "nowhere", "no such folder")
    (tmp_path / "empty").mkdir()
    refused(f"clipfolder:{tmp_path / 'empty'}", "no clips")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "a" / "notes.txt").write_text("no frames here")
    refused(f"clipfolder:{tmp_path / 'hollow'}", "no clips", "1 folders, none with frame images")
    (clips / "hollow").mkdir()
    (clips / "readme.txt").write_text("not a clip")
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", "train")
    assert cs.names == ["jump", "sit", "walk"]
    assert any("skipped 1 clip folders without frame images" in n and "hollow" in n for n in cs.notes), cs.notes
    assert any("ignored 1 files" in n and "readme.txt" in n for n in cs.notes), cs.notes


def test_frames_of_different_sizes_are_said_and_resized(clips):
    write_clip(clips / "walk", {"f02.png": frame(50, side=20)})           # the middle frame: probed
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", "train")
    assert any("1 of the clips probed have frames of different sizes (first: walk)" in n for n in cs.notes), cs.notes
    assert cs.clip(2).shape == (5, 1, 12, 12)


def test_bad_labels_files_are_refused_by_line(clips):
    spec = f"clipfolder:{clips}"
    for text, words in (("walk,move\n", ("line 1", "not the header clip,label")),
                        ("clip,label\nwalk,move\njump\n", ("line 3", "'jump' is not clip,label")),
                        ("clip,label\n\nwalk,move,fast\n", ("line 3", "is not clip,label")),
                        ("clip,label\nwalk,\n", ("line 2",)),
                        ("clip,label\nwalk,a\nwalk,b\n", ("line 3", "'walk' is labeled twice")),
                        ('clip,label\n"walk,a\n', ("line", "not valid CSV")),
                        ("\n\n", ("empty",)),
                        (b"clip,label\nwalk,caf\xe9\n", ("not UTF-8", "line 2"))):
        path = clips / "labels.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        refused(spec, "labels.csv", *words)
    (clips / "labels.csv").write_text("clip,label\nwalk,a\nrun,b\nswim,b\nfly,c\nhop,c\n")
    message = refused(spec, "4 clips named are not in", "'run', 'swim', 'fly', ...")
    assert "hop" not in message


def test_an_unreadable_frame_is_refused_naming_the_file(clips):
    (clips / "walk" / "f02.png").write_bytes(b"not a png")            # the middle frame: found by the probe
    refused(f"clipfolder:{clips}", "f02.png", "frame 2 of clip 'walk'", "hole")
    write_clip(clips / "walk", {"f02.png": frame(50)})
    (clips / "walk" / "f01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")   # not probed: found when decoded
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", "train")
    assert cs.frames([2], [[0, 2]]).shape == (1, 2, 1, 12, 12)
    with pytest.raises(DplError, match=r"f01.png: frame 1 of clip 'walk' cannot be decoded .*hole"):
        cs.clip(2)


def test_frames_decode_only_the_frames_asked_for(clips, monkeypatch):
    decoded = []
    decode = images.decode
    monkeypatch.setattr(images, "decode", lambda raw, *shape: decoded.append(raw) or decode(raw, *shape))
    cs = clip_files.read_clip_folder(f"clipfolder:{clips}", "train")
    assert decoded == []                                           # reading the set decodes nothing
    cs.frames([2], [[4, 1, 4]])
    assert len(decoded) == 2                                       # frames 1 and 4, once each
    cs.frames([0, 2], [[0], [3]])
    assert len(decoded) == 4


def test_a_video_clip_decodes_its_frames(tmp_path, monkeypatch):
    root = tmp_path / "videos"
    root.mkdir()
    frames = torch.zeros(6, 3, 32, 48, dtype=torch.uint8)
    for t in range(6):
        frames[t] = 20 + 35 * t
    encode_test_video(root / "ramp.mp4", frames)
    write_clip(root / "stills", {"a.png": frame(0, side=32), "b.png": frame(9, side=32)})
    cs = clip_files.read_clip_folder(f"clipfolder:{root}", "train")
    assert cs.names == ["ramp.mp4", "stills"] and cs.lengths.tolist() == [6, 2]
    assert (cs.channels, cs.size) == (3, 32) and cs.backend in ("torchcodec", "av")
    ramp = cs.clip(0)
    assert ramp.shape == (6, 3, 32, 32)
    assert np.allclose(ramp.float().mean(dim=(1, 2, 3)).numpy(), 20 + 35 * np.arange(6), atol=4)   # lossy, in order
    asked = []
    video = clip_files._video(root / "ramp.mp4", cs.backend)
    read = video.read
    monkeypatch.setattr(video, "read", lambda wanted: asked.append(wanted.tolist()) or read(wanted))
    assert torch.equal(cs.frames([0], [[5, 2, 5]])[0], ramp[[5, 2, 5]])
    assert asked == [[2, 5]]
    if cs.backend == "torchcodec":
        pytest.importorskip("av", reason="PyAV is not installed: its fallback is not checked")
        monkeypatch.setattr(clip_files, "_available_backend", lambda: "av")
        by_av = clip_files.read_clip_folder(f"clipfolder:{root}", "train")
        assert by_av.backend == "av" and by_av.lengths.tolist() == [6, 2]
        assert (by_av.clip(0).int() - ramp.int()).abs().max() <= 3


def test_video_clips_without_a_decoder_are_refused(tmp_path, monkeypatch):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"\0" * 64)
    monkeypatch.setattr(clip_files, "_available_backend", lambda: None)
    refused(f"clipfolder:{tmp_path / 'v'}", "a.mp4", "apt-get install ffmpeg", "pip install av")
    monkeypatch.undo()
    if clip_files._available_backend() is not None:
        refused(f"clipfolder:{tmp_path / 'v'}", "a.mp4", "not a video")
