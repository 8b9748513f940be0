//! The social app's model: users, posts, and the timelines read model.

use scalekit::codec::{Codec, CodecError};
use scalekit::cqrs::{
    Command, CommandContext, CommandError, CommandHandler, Projection, Query, QueryHandler,
};
use scalekit::{MemoryStore, Store};

/// A row of the users table.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub email: String,
}

/// How a `User` is stored: `name`, a NUL byte, `email`.
impl Codec for User {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.name.contains('\0') {
            return Err("a user name cannot hold a NUL byte".into());
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        out.extend_from_slice(self.email.as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let split = bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or("a stored user has no separator")?;
        Ok(User {
            name: std::str::from_utf8(&bytes[..split])?.to_string(),
            email: std::str::from_utf8(&bytes[split + 1..])?.to_string(),
        })
    }
}

/// Every 97th user's address bounces at the email gateway.
pub fn user(id: u64, version: u64) -> User {
    let domain = if id % 97 == 13 {
        "bounce.invalid"
    } else {
        "example.com"
    };
    User {
        name: format!("user {id} v{version}"),
        email: format!("user{id}@{domain}"),
    }
}

/// Users follow each other in circles of ten: a post reaches the
/// timelines of its author's circle.
pub fn circle(author: u64, users: u64) -> impl Iterator<Item = u64> {
    let first = author / 10 * 10;
    (first..(first + 10).min(users)).filter(move |u| *u < users)
}

/// Write a post; the request id makes a retried request harmless.
#[derive(Debug, Clone)]
pub struct CreatePost {
    pub author: u64,
    pub text: String,
    pub request_id: String,
}

impl Command for CreatePost {
    type Output = u64;
    fn idempotency_key(&self) -> Option<String> {
        Some(self.request_id.clone())
    }
}

/// The event a post leaves in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct PostCreated {
    pub id: u64,
    pub author: u64,
}

impl Codec for PostCreated {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.author.to_le_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let word = |at: usize| -> Result<u64, CodecError> {
            let b: [u8; 8] = bytes
                .get(at..at + 8)
                .ok_or("a short PostCreated")?
                .try_into()?;
            Ok(u64::from_le_bytes(b))
        };
        Ok(PostCreated {
            id: word(0)?,
            author: word(8)?,
        })
    }
}

pub struct PostHandler;

impl CommandHandler<CreatePost, PostCreated> for PostHandler {
    async fn handle(
        &self,
        post: CreatePost,
        write_model: &mut CommandContext<'_, PostCreated>,
    ) -> Result<u64, CommandError> {
        let length = post.text.chars().count();
        if length == 0 || length > 280 {
            return Err(CommandError::Rejected(format!(
                "a post has 1 to 280 characters, not {length}"
            )));
        }
        let id = write_model.get::<u64>("posts/last-id").await?.unwrap_or(0) + 1;
        write_model.put("posts/last-id", &id)?;
        write_model.put(format!("post/{id}"), &post.text)?;
        write_model.emit(PostCreated {
            id,
            author: post.author,
        });
        Ok(id)
    }
}

/// A timeline: the newest posts of one's circle, `(post, author)`, newest last.
pub type Timeline = Vec<(u64, u64)>;
pub type Timelines = MemoryStore<u64, Timeline>;
pub const TIMELINE_LENGTH: usize = 50;

#[derive(Debug, Clone)]
pub struct GetTimeline(pub u64);

impl Query for GetTimeline {
    type Output = Timeline;
}

pub struct TimelineHandler(pub Projection<Timelines, PostCreated>);

impl QueryHandler<GetTimeline> for TimelineHandler {
    async fn handle(&self, query: GetTimeline) -> scalekit::Result<Timeline> {
        Ok(self.0.read_model().get(&query.0).await?.unwrap_or_default())
    }
}
