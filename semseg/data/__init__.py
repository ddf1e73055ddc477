"""The data stage: datasets and their list files, images and labels, transforms, sampling, downloads."""
