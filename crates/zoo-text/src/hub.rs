//! The local Hugging Face hub cache, where pretrained models live by id (`bert-base-uncased`,
//! `sentence-transformers/all-MiniLM-L6-v2`): `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, laid out as Hugging Face's own tools lay it out:
//!
//! ```text
//! models--ORG--NAME/
//!   refs/main              the commit the snapshot below is of
//!   snapshots/COMMIT/      config.json, model.safetensors, tokenizer.json, ...
//! ```
//!
//! A model missing from the cache is downloaded into it from the hub (`$HF_ENDPOINT`, else
//! `https://huggingface.co`) unless downloads are off (`ZOO_OFFLINE`).

use crate::TextError;
use crate::registry::{get, write_into_place};
use std::path::{Path, PathBuf};

/// The files a model directory needs.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// The hub cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("huggingface")
        });
    home.join("hub")
}

/// Whether `name` reads as a model id (`NAME` or `ORG/NAME`, letters, digits, `-`, `_`, `.`)
/// rather than a path.
pub fn is_model_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    (1..=2).contains(&parts.len())
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The directory holding model `id`'s files: its snapshot in `cache`, with any of
/// [`MODEL_FILES`] it lacks downloaded first (when `download`).
pub fn model_dir(id: &str, cache: &Path, download: bool) -> Result<PathBuf, TextError> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let missing = |reason: String| TextError::ModelMissing {
        id: id.to_string(),
        cache: cache.to_path_buf(),
        reason,
    };
    let commit = std::fs::read_to_string(repo.join("refs").join("main"))
        .ok()
        .map(|c| c.trim().to_string());
    if let Some(commit) = &commit {
        let snapshot = repo.join("snapshots").join(commit);
        if MODEL_FILES.iter().all(|f| snapshot.join(f).is_file()) {
            return Ok(snapshot);
        }
    }
    if !download {
        return Err(missing("downloads are disabled by ZOO_OFFLINE".into()));
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let mut commit = commit;
    for file in MODEL_FILES {
        if let Some(commit) = &commit
            && repo.join("snapshots").join(commit).join(file).is_file()
        {
            continue;
        }
        let url = format!(
            "{}/{id}/resolve/main/{file}",
            endpoint.trim_end_matches('/')
        );
        eprintln!("downloading {url}");
        let (bytes, served) =
            get(&url, Some("x-repo-commit")).map_err(|e| missing(format!("{url}: {e}")))?;
        // The hub says which commit it served; the first file's commit names the snapshot.
        let commit = commit.get_or_insert_with(|| served.unwrap_or_else(|| "main".into()));
        let path = repo.join("snapshots").join(&*commit).join(file);
        write_into_place(&path, &bytes).map_err(missing)?;
    }
    let commit = commit.expect("a file was downloaded");
    write_into_place(&repo.join("refs").join("main"), commit.as_bytes()).map_err(missing)?;
    Ok(repo.join("snapshots").join(commit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ids_and_paths_are_told_apart() {
        for id in [
            "bert-base-uncased",
            "sentence-transformers/all-MiniLM-L6-v2",
            "gpt2",
        ] {
            assert!(is_model_id(id), "{id}");
        }
        for path in ["runs/a/b", "/tmp/model", "./model", "../model", "", "a//b"] {
            assert!(!is_model_id(path), "{path}");
        }
    }

    /// Serves every request for `/ORG/NAME/resolve/main/FILE` with a body naming the file and
    /// the commit header, counting the requests.
    fn serve_hub(requests: Arc<AtomicUsize>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 2048];
                let n = stream.read(&mut request).unwrap();
                let line = String::from_utf8_lossy(&request[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                requests.fetch_add(1, Ordering::SeqCst);
                let body = format!("contents of {path}");
                let header = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Repo-Commit: abc123\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(header.as_bytes()).unwrap();
                stream.write_all(body.as_bytes()).unwrap();
            }
        });
        url
    }

    #[test]
    fn a_missing_model_is_downloaded_into_the_cache_once() {
        let cache = std::env::temp_dir().join(format!("zoo-hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let requests = Arc::new(AtomicUsize::new(0));
        // SAFETY: the only test in this crate that reads HF_ENDPOINT.
        unsafe { std::env::set_var("HF_ENDPOINT", serve_hub(requests.clone())) };
        let offline = model_dir("org/tiny", &cache, false)
            .unwrap_err()
            .to_string();
        assert!(
            offline.contains("org/tiny") && offline.contains("ZOO_OFFLINE"),
            "{offline}"
        );

        let dir = model_dir("org/tiny", &cache, true).unwrap();
        assert_eq!(dir, cache.join("models--org--tiny/snapshots/abc123"));
        assert_eq!(
            std::fs::read_to_string(cache.join("models--org--tiny/refs/main")).unwrap(),
            "abc123"
        );
        for file in MODEL_FILES {
            assert_eq!(
                std::fs::read_to_string(dir.join(file)).unwrap(),
                format!("contents of /org/tiny/resolve/main/{file}")
            );
        }
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        // Found in the cache the second time, even with downloads off.
        assert_eq!(model_dir("org/tiny", &cache, false).unwrap(), dir);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
