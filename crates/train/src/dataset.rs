//! Finding, loading and preparing the data for a run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cifar_data::{
    Cifar10, Features, FittedPreprocessing, Preprocessing, SplitConfig, archive, find_data_dir,
};

/// Finds the data folder (`--data`, `$CIFAR10_DIR`, `./data/cifar-10-batches-bin`,
/// the cache) and loads it; with `download`, fetches the official archive into
/// the cache first when nothing is found.
pub fn load(data: Option<&Path>, download: bool) -> Result<(PathBuf, Cifar10)> {
    let dir = match find_data_dir(data) {
        Ok(dir) => dir,
        Err(e) if download && data.is_none() => {
            let cache = archive::default_cache_dir()
                .context("this platform has no cache folder; pass --data")?;
            eprintln!("{e}\ndownloading CIFAR-10 into {}", cache.display());
            archive::download(&cache, archive::URL, archive::MD5)?
        }
        Err(e) => return Err(e.into()),
    };
    let data = Cifar10::load(&dir)?;
    Ok((dir, data))
}

/// The splits of a run, preprocessed.
pub struct Prepared {
    /// Training features.
    pub train: Arc<Features>,
    /// Validation features.
    pub val: Arc<Features>,
    /// Test features, when the data has a test batch.
    pub test: Option<Arc<Features>>,
    /// The preprocessing fitted on the training split.
    pub fitted: FittedPreprocessing,
}

/// Splits `data`, fits `preprocess` on the training split (or reuses
/// `fitted`, a run's saved preprocessing) and transforms every split.
pub fn prepare(
    data: &Cifar10,
    split: &SplitConfig,
    preprocess: &Preprocessing,
    fitted: Option<FittedPreprocessing>,
) -> Result<Prepared> {
    let splits = split.split(data)?;
    // A run's saved statistics are used as they are, never silently refitted.
    let fitted = match fitted {
        Some(f) => {
            f.check_fitted_on(preprocess, &splits.train)?;
            f
        }
        None => preprocess.fit(&splits.train)?,
    };
    Ok(Prepared {
        train: Arc::new(fitted.transform(&splits.train)),
        val: Arc::new(fitted.transform(&splits.val)),
        test: splits.test.as_ref().map(|t| Arc::new(fitted.transform(t))),
        fitted,
    })
}
