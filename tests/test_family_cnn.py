"""CNN families: torchxrayvision's DenseNet-121 and a MONAI 3D ResNet CT encoder, from the raw file to the embedding.

References at random init, saved as state dicts (safetensors): torchxrayvision's own preprocessing
(``xrv.utils.normalize``, ``XRayCenterCrop``, ``XRayResizer``) and ``DenseNet.features2``; MONAI's
``LoadImage`` + the Merlin-published transforms and ``resnet10``'s pooled features. Real files:
scikit-image's fundus photograph and grey photograph, the shared CT NIfTI.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from family_fixtures import CAMERA, RETINA

import medfm  # noqa: E402

CT_NIFTI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct" / "ct_30_slices.nii.gz"


@pytest.fixture(scope="module")
def xrv_pair(tmp_path_factory):
    xrv = pytest.importorskip("torchxrayvision")
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = xrv.models.DenseNet(weights=None).eval()
    path = tmp_path_factory.mktemp("xrv") / "densenet121-res224-all.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = medfm.create_model({"name": "xrv-densenet121", "modalities": {
        "xray": {"init": {"path": str(path), "format": "xrv", "strict": True}}}}).eval()
    return xrv, ref, model


@pytest.mark.parametrize("image", [RETINA, CAMERA], ids=["fundus_rgb", "grey_png"])
def test_xrv_densenet_embedding_matches_torchxrayvision(xrv_pair, image):
    import skimage.io
    import torchvision

    xrv, ref, model = xrv_pair
    img = xrv.utils.normalize(skimage.io.imread(str(image)), 255)  # the package's README recipe
    if img.ndim == 3:
        img = img.mean(2)
    img = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])(img[None])
    x_ref = torch.from_numpy(img)[None]
    item = model.adapters["xray"].load(str(image))
    assert item["x"].shape == (1, 224, 224)
    assert float((item["x"] - x_ref[0]).abs().max()) < 1e-3  # values span [-1024, 1024]
    with torch.no_grad():
        z_ref = ref.features2(x_ref)
        z = model.encode("xray", item["x"][None], normalize=False)
    diff = float((z - z_ref).abs().max())
    print(f"xrv densenet121 {image.name}: max abs diff {diff:.2e}")
    assert diff <= 1e-4 and float(z_ref.abs().max()) > 1e-3
    rep = model.init_reports["xray"]
    assert "classifier.weight" in rep["unexpected"] and not rep["missing"]


def test_monai_ct_encoder_matches_monai_transforms_and_net(tmp_path):
    if not CT_NIFTI.is_file():
        pytest.skip("the shared CT NIfTI is not here (../shared/data)")
    from monai.networks.nets import resnet10
    from monai.transforms import (CenterSpatialCrop, Compose, LoadImage, Orientation, ScaleIntensityRange, Spacing,
                                  SpatialPad)
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = resnet10(spatial_dims=3, n_input_channels=1, num_classes=3).eval()
    path = tmp_path / "resnet10_ct.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    size = [64, 64, 32]  # the published 224x224x160, smaller for a fast test (reported as a departure)
    model = medfm.create_model({"name": "ct-monai-resnet3d", "modalities": {
        "ct": {"size": size, "init": {"path": str(path), "format": "monai_net"}}}}).eval()
    assert any("size=" in n for n in model.init_reports["ct"]["notes"])
    pre = Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="RAS"),
                   Spacing(pixdim=(1.5, 1.5, 3.0), mode="bilinear"),
                   ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
                   SpatialPad(spatial_size=size), CenterSpatialCrop(roi_size=size)])
    x_ref = pre(str(CT_NIFTI)).as_tensor()[None].float()
    item = model.adapters["ct"].load(str(CT_NIFTI))
    assert item["x"].shape == x_ref.shape[1:]
    assert float((item["x"] - x_ref[0]).abs().max()) < 1e-5
    ref.fc = torch.nn.Identity()
    with torch.no_grad():
        z_ref = ref(x_ref)
        z = model.encode("ct", item["x"][None], normalize=False)
    diff = float((z - z_ref).abs().max())
    print(f"monai resnet10 CT: max abs diff {diff:.2e}")
    assert diff <= 1e-4 and float(z_ref.abs().max()) > 1e-4
    with pytest.raises(medfm.errors.CheckpointError, match="size="):
        medfm.create_model({"name": "ct-monai-resnet3d", "modalities": {
            "ct": {"size": size, "init": {"path": str(path), "format": "monai_net", "strict": True}}}})
    np.testing.assert_allclose(model.adapters["ct"].inference_spec()["spec"]["window"], [-1000.0, 1000.0])
