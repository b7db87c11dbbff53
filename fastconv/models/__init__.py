"""Model zoo built from fastconv layers (every Conv2d, BatchNorm2d and pooling layer is fastconv's).

    import fastconv.models as M
    M.list_models()                       # ['alexnet', 'densenet121', 'googlenet', ...]
    net = M.resnet50(num_classes=10)      # torchvision's names: a torchvision state_dict loads strictly
    net = M.get_model("googlenet", aux_logits=True)
    net = M.resnet50(fused=True)          # every builder: conv+BN(+ReLU)(+residual) via fastconv.fuse_for_training
    print(M.profile(net, (3, 224, 224)))  # parameters and multiply-adds per layer
"""

from fastconv.models._registry import get_model, list_models, register_model
from fastconv.models.classic import AlexNet, DenseNet, LeNet5, VGG, alexnet, densenet121, lenet5, vgg16, vgg16_bn
from fastconv.models.googlenet import BasicConv2d, GoogLeNet, GoogLeNetOutputs, googlenet
from fastconv.models.inception import Inception3, InceptionOutputs, inception_v3
from fastconv.models.profile import LayerProfile, Profile, profile
from fastconv.models.resnet import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152,
                                    resnext50_32x4d, wide_resnet50_2)

__all__ = [
    "list_models", "get_model", "register_model", "profile", "Profile", "LayerProfile",
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "wide_resnet50_2",
    "GoogLeNet", "GoogLeNetOutputs", "BasicConv2d", "googlenet", "Inception3", "InceptionOutputs", "inception_v3",
    "LeNet5", "AlexNet", "VGG", "DenseNet", "lenet5", "alexnet", "vgg16", "vgg16_bn", "densenet121",
]
