//! Fuzzing entry points for what the control plane takes from tenants and
//! the kubelet (the targets in fuzz/; built only with `--cfg fuzzing`):
//! OCI layer tars and the component labels of a pod. Not an interface.

use std::collections::HashMap;
use std::path::Path;

use super::image::{apply_layer, Descriptor};

/// Applies the layer blob at `blob` (tar, or gzip'd tar) to `root`.
pub fn apply_layer_file(root: &Path, blob: &Path) -> Result<(), super::image::ImageError> {
    let layer = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: "sha256:fuzz".into(),
        size: 0,
        platform: None,
        annotations: None,
    };
    apply_layer(root, blob, &layer, "sha256:fuzz", "fuzz.example/layer:1")
}

/// The component a pod's labels name; the error's message otherwise.
pub fn component_of_pod(labels: &HashMap<String, String>) -> Result<String, String> {
    super::cri::labels::component_of_pod(labels)
        .map(|c| c.to_string())
        .map_err(|e| e.to_string())
}

/// Whether a container's labels agree with its pod's.
pub fn check_container_labels(
    container: &HashMap<String, String>,
    pod: &HashMap<String, String>,
) -> Result<(), String> {
    super::cri::labels::check_container_labels(container, pod).map_err(|e| e.to_string())
}
