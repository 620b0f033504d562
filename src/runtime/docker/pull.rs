//! Docker's pull progress stream, summed into berth's [`PullProgress`], and
//! how an image reference becomes Docker's `fromImage` and `tag`.

use std::collections::BTreeMap;

use crate::runtime::PullProgress;

/// Per-layer progress of one pull, from Docker's JSON progress stream.
#[derive(Default)]
pub(super) struct PullTally {
    /// layer id → (current, total, done)
    layers: BTreeMap<String, (u64, u64, bool)>,
}

impl PullTally {
    pub(super) fn record(&mut self, info: &bollard::models::CreateImageInfo) {
        let Some(id) = info.id.as_deref() else { return };
        let status = info.status.as_deref().unwrap_or_default();
        // The first line names the tag, not a layer.
        if status.starts_with("Pulling from") {
            return;
        }
        let entry = self.layers.entry(id.to_string()).or_default();
        if let Some(d) = &info.progress_detail {
            if status == "Downloading" {
                entry.0 = d.current.unwrap_or(0).max(0) as u64;
                entry.1 = d.total.unwrap_or(0).max(0) as u64;
            }
        }
        if matches!(
            status,
            "Pull complete" | "Already exists" | "Download complete"
        ) {
            entry.0 = entry.1;
            entry.2 = status != "Download complete" || entry.2;
        }
    }

    pub(super) fn summary(&self) -> PullProgress {
        PullProgress {
            layers_done: self.layers.values().filter(|l| l.2).count(),
            layers: self.layers.len(),
            bytes_done: self.layers.values().map(|l| l.0).sum(),
            bytes_total: self.layers.values().map(|l| l.1).sum(),
        }
    }
}

/// Split an image reference into Docker's `fromImage` and `tag`. An empty tag
/// would make Docker pull every tag of the repository, so a reference without
/// one means `latest`, as with the docker CLI. A digest goes in `tag`.
pub(super) fn split_reference(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&image[..colon], &image[colon + 1..])
        }
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_repo_and_tag_defaulting_to_latest() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("nginx:1.27"), ("nginx", "1.27"));
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/team/app:v2"),
            ("127.0.0.1:5000/team/app", "v2")
        );
        assert_eq!(split_reference("app@sha256:abcd"), ("app", "sha256:abcd"));
    }
}
