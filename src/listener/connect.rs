//! HTTP `CONNECT host:port`: the head under the listener's deadline and limits, the same hygiene
//! and authentication as forwarded requests, then a tunnel.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::io::write_reply;
use super::{Listener, Request};
use crate::outcome::Outcome;
use crate::protocol::http;
use crate::reply::Answer;

impl Listener {
    pub(super) async fn connect(&self, mut stream: Stream, mut buf: BytesMut, mut req: Request) {
        let parse = |buf: &[u8]| {
            let Some((head, used)) = http::parse_head(buf)? else {
                return Ok(None);
            };
            http::hygiene(&head)?;
            let target = http::connect_target(&head.target)?;
            Ok(Some(((head, target), used)))
        };
        let refusal = |e: &http::Error| Some(Answer::http(e.status(), &e.to_string()));
        let Some(((head, target), used)) = self
            .read_message(&mut stream, &mut buf, &req, parse, refusal)
            .await
        else {
            return;
        };
        req.handshake_done();
        let early = buf.split_off(used);
        if let Err(why) = self.authenticate(&head, &mut req).await {
            let answer = Answer::auth_required(&self.realm());
            self.finish_refused(&req, Some(&target), Outcome::AuthFailed, why, 407);
            write_reply(&mut stream, &answer.bytes).await;
            return;
        }
        let realm = self.realm();
        self.open_and_tunnel(
            req,
            stream,
            &target,
            early,
            |_| Answer::connect_established(),
            |e| Answer::http_open(e, &realm),
        )
        .await;
    }
}
