//! What a registry operation produces when events may be due: the answer, the
//! events it causes, and the change it makes, kept apart so a `required`
//! webhook can be asked before the change becomes visible.

use crate::digest::Digest;
pub use crate::event_webhook::event::EventDraft;
use crate::http::Response;

/// A change prepared and validated but not yet made.
#[derive(Debug, Clone)]
pub enum Commit {
    /// Reads change nothing.
    Nothing,
    PutManifest {
        name: String,
        digest: Digest,
        media_type: String,
        body: Vec<u8>,
        tags: Vec<String>,
        /// The subject digest and this manifest's referrer descriptor.
        referrer: Option<(Digest, serde_json::Value)>,
        /// Blobs and child manifests that must still be readable from `name`
        /// when the change is made: a `required` webhook's wait can last
        /// seconds, and a delete may come in between. Empty when missing
        /// references are allowed.
        recheck: Vec<Referenced>,
        /// The child manifests an index lists: on a bucket they are read
        /// again after the write (`Registry::confirm_children`).
        children: Vec<Digest>,
    },
    /// A verified upload session to move into the blob store.
    Upload {
        name: String,
        id: String,
        digest: Digest,
    },
    Mount {
        name: String,
        digest: Digest,
    },
    DeleteManifest {
        name: String,
        digest: Digest,
    },
    DeleteTag {
        name: String,
        tag: String,
    },
    /// A removal the registry decided itself (garbage collection, retention),
    /// made only if `name` took no manifest write since the decision
    /// (`Storage::manifest_epoch` still `epoch`): a push in between may have
    /// tagged or referenced what was judged removable.
    Remove {
        name: String,
        target: Removal,
        epoch: u64,
    },
}

/// What a registry-decided removal takes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The tag, if it still points to `digest`.
    Tag { tag: String, digest: Digest },
    /// The manifest, once none of `parents` (indexes listing it) is stored
    /// any more and none of `former_tags` (tags removed with it) points to
    /// it still (a webhook may have kept one).
    Manifest {
        digest: Digest,
        parents: Vec<Digest>,
        former_tags: Vec<String>,
    },
}

/// Content a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Referenced {
    Blob(Digest),
    Manifest(Digest),
}

impl Commit {
    /// The commit for a change made in the turn it was checked in, with no
    /// wait in between: its references need no second look.
    pub fn checked_now(mut self) -> Commit {
        if let Commit::PutManifest { recheck, .. } = &mut self {
            recheck.clear();
        }
        self
    }
}

/// A registry answer, with the events and change it carries when any webhook
/// may care.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    pub staged: Option<Staged>,
}

#[derive(Debug)]
pub struct Staged {
    pub events: Vec<EventDraft>,
    pub commit: Commit,
}

impl From<Response> for Outcome {
    fn from(response: Response) -> Outcome {
        Outcome {
            response,
            staged: None,
        }
    }
}
