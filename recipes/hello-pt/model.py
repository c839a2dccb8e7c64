"""The CNN of NVFlare's hello-pt example, for 32x32 RGB images in 10 classes."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SimpleNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def synthetic_images(site_seed: int, n: int = 512):
    """A CIFAR-shaped stand-in that needs no download: each class is a fixed colour pattern plus noise.
    Every site draws its own images (its seed) of the same classes."""
    patterns = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(site_seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = patterns[labels] + 1.5 * torch.randn(n, 3, 32, 32, generator=g)
    return images, labels
