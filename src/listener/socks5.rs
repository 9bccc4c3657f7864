//! SOCKS5 (RFC 1928) with username/password (RFC 1929): greeting, optional authentication, one
//! CONNECT request. Every malformed step that has a reply code gets it before the close.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::io::{read_until, write_reply};
use super::{Listener, Request};
use crate::auth::Check;
use crate::identity::kerberos::{Context, Step};
use crate::identity::Acceptor;
use crate::outcome::Outcome;
use crate::protocol::socks5;
use crate::protocol::socks5_gssapi as gssapi;
use crate::reply::Answer;
use crate::session::OpenError;

impl Listener {
    pub(super) async fn socks5(&self, mut stream: Stream, mut buf: BytesMut, mut req: Request) {
        // No method offered: "no acceptable methods" is the answer RFC 1928 has.
        let no_method = |_: &_| {
            Some(Answer::raw(
                socks5::method_reply(socks5::NO_ACCEPTABLE).to_vec(),
            ))
        };
        let Some((methods, used)) = self
            .read_message(
                &mut stream,
                &mut buf,
                &req,
                socks5::parse_greeting,
                no_method,
            )
            .await
        else {
            return;
        };
        let _ = buf.split_to(used);
        let kerberos = self.proxy.identity.load_full().kerberos.clone();
        let method = if let Some(k) = kerberos
            .clone()
            .filter(|_| self.proxy.wants_users() && methods.contains(&gssapi::METHOD))
        {
            write_reply(&mut stream, &socks5::method_reply(gssapi::METHOD)).await;
            match self.gssapi(&mut stream, &mut buf, &req, k).await {
                Some(principal) => req.who.user = Some(principal),
                None => return,
            }
            gssapi::METHOD
        } else if self.proxy.wants_users()
            && self.proxy.auth.enabled()
            && methods.contains(&socks5::USER_PASS)
        {
            socks5::USER_PASS
        } else if methods.contains(&socks5::NO_AUTH) {
            socks5::NO_AUTH
        } else {
            let why = "no acceptable authentication method".to_string();
            self.finish_refused(&req, None, Outcome::BadRequest, why, 0);
            write_reply(&mut stream, &socks5::method_reply(socks5::NO_ACCEPTABLE)).await;
            return;
        };
        if method != gssapi::METHOD {
            write_reply(&mut stream, &socks5::method_reply(method)).await;
        }
        if method == socks5::USER_PASS {
            let Ok(parsed) =
                read_until(&mut stream, &mut buf, req.deadline, socks5::parse_user_pass).await
            else {
                return;
            };
            let verdict = match parsed {
                Ok((creds, used)) => {
                    let _ = buf.split_to(used);
                    let check = self
                        .proxy
                        .auth
                        .check(req.who.client, &creds.username, &creds.password)
                        .await;
                    let result = match check {
                        Check::Valid => "ok",
                        Check::Invalid => "invalid",
                        Check::Throttled => "throttled",
                        Check::Unavailable => "unavailable",
                    };
                    count("socks5-userpass", result);
                    if check == Check::Valid {
                        req.who.user = Some(creds.username);
                    }
                    check
                }
                Err(_) => {
                    count("socks5-userpass", "malformed");
                    Check::Invalid
                }
            };
            if verdict != Check::Valid {
                let why = match verdict {
                    Check::Throttled => "too many failed logins from this client; try again later",
                    Check::Unavailable => "the directory cannot check passwords now",
                    _ => "invalid credentials",
                };
                self.finish_refused(&req, None, Outcome::AuthFailed, why.into(), 0);
                write_reply(&mut stream, &socks5::user_pass_reply(false)).await;
                return;
            }
            write_reply(&mut stream, &socks5::user_pass_reply(true)).await;
        }
        let refusal = |e: &socks5::Error| e.reply().map(|code| Answer::socks5(code, None));
        let Some((request, used)) = self
            .read_message(&mut stream, &mut buf, &req, socks5::parse_request, refusal)
            .await
        else {
            return;
        };
        req.handshake_done();
        let early = buf.split_off(used);
        if request.command != socks5::Command::Connect {
            let e = OpenError::BadRequest("only CONNECT is supported".into());
            let answer = Answer::socks5(socks5::Reply::CommandNotSupported, None);
            self.refuse(&mut stream, &req, Some(&request.target), &e, answer)
                .await;
            return;
        }
        self.open_and_tunnel(
            req,
            stream,
            &request.target,
            early,
            |up| Answer::socks5(socks5::Reply::Succeeded, up.stream.local_addr().ok()),
            Answer::socks5_open,
        )
        .await;
    }
}

/// Counts one authentication outcome.
fn count(scheme: &str, result: &str) {
    crate::metrics::metrics()
        .auth
        .with_label_values(&[scheme, result])
        .inc();
}

/// At most this many context tokens from a client (Kerberos needs one; SPNEGO two).
const MAX_LEGS: usize = 4;

impl Listener {
    /// RFC 1961: establishes the client's security context with the keytab, then settles the
    /// protection level (carousel grants "none": the tunnel carries the client's bytes as they
    /// are, as curl and Dante's "clear" expect). The principal on success; otherwise the abort
    /// message was sent, and the refusal logged and counted.
    async fn gssapi(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        req: &Request,
        acceptor: std::sync::Arc<Acceptor>,
    ) -> Option<String> {
        if !self.proxy.auth.take_token_attempt(req.who.client) {
            count("socks5-gssapi", "throttled");
            let why = "too many failed logins from this client; try again later".to_string();
            self.finish_refused(req, None, Outcome::AuthFailed, why, 0);
            write_reply(stream, &gssapi::abort()).await;
            return None;
        }
        let mut ctx = Some(acceptor.context());
        let mut principal = None;
        for _ in 0..MAX_LEGS {
            let msg = match read_gss(stream, buf, req, gssapi::AUTHENTICATION).await? {
                Ok(msg) => msg,
                Err(why) => return self.gss_refused(stream, req, why).await,
            };
            let (back, step) = blocking(ctx.take()?, move |c| c.step(&msg.token)).await?;
            ctx = Some(back);
            match step {
                Ok(Step::Continue(token)) => {
                    write_reply(stream, &gssapi::encode(gssapi::AUTHENTICATION, &token)?).await;
                }
                Ok(Step::Done {
                    principal: p,
                    reply,
                }) => {
                    if let Some(token) = reply {
                        write_reply(stream, &gssapi::encode(gssapi::AUTHENTICATION, &token)?).await;
                    }
                    principal = Some(p);
                    break;
                }
                Err(e) => return self.gss_refused(stream, req, e.to_string()).await,
            }
        }
        let Some(principal) = principal else {
            let why = "the GSS-API exchange took too many legs".to_string();
            return self.gss_refused(stream, req, why).await;
        };
        // The protection level: wrapped (RFC 1961 §4.3), or a bare byte (NEC's reference
        // implementation, curl's --socks5-gssapi-nec). Either way the answer is "none", in the
        // same form.
        let msg = match read_gss(stream, buf, req, gssapi::PROTECTION).await? {
            Ok(msg) => msg,
            Err(why) => return self.gss_refused(stream, req, why).await,
        };
        let answer = if msg.token.len() == 1 {
            Ok(vec![gssapi::LEVEL_NONE])
        } else {
            let (_, r) = blocking(ctx.take()?, move |c| {
                let level = c.unwrap(&msg.token)?;
                if level.len() != 1 {
                    return Err(crate::identity::KerberosError::Rejected(
                        "the protection level is not one byte".into(),
                    ));
                }
                c.wrap(&[gssapi::LEVEL_NONE])
            })
            .await?;
            r
        };
        match answer.map(|t| gssapi::encode(gssapi::PROTECTION, &t)) {
            Ok(Some(reply)) => write_reply(stream, &reply).await,
            Ok(None) => return None,
            Err(e) => return self.gss_refused(stream, req, e.to_string()).await,
        }
        count("socks5-gssapi", "ok");
        self.proxy.auth.token_valid(req.who.client);
        Some(principal)
    }
}

impl Listener {
    /// Ends a failed GSS-API exchange: counted and logged as a failed login, then RFC 1961's
    /// abort; always `None` (no principal).
    async fn gss_refused(&self, stream: &mut Stream, req: &Request, why: String) -> Option<String> {
        count("socks5-gssapi", "invalid");
        crate::metrics::metrics().auth_failures.inc();
        self.finish_refused(req, None, Outcome::AuthFailed, why, 0);
        write_reply(stream, &gssapi::abort()).await;
        None
    }
}

/// Reads one GSS-API message of `kind` under the request's deadline: `None` when the client went
/// away, `Err` with the reason when what it sent is not one.
async fn read_gss(
    stream: &mut Stream,
    buf: &mut BytesMut,
    req: &Request,
    kind: u8,
) -> Option<Result<gssapi::Message, String>> {
    let parse = |b: &[u8]| gssapi::parse(b, kind);
    match read_until(stream, buf, req.deadline, parse).await.ok()? {
        Ok((msg, used)) => {
            let _ = buf.split_to(used);
            Some(Ok(msg))
        }
        Err(e) => Some(Err(e.to_string())),
    }
}

/// Runs a GSSAPI call on the blocking pool (it may read the keytab and write the replay cache)
/// and hands the context back with its result.
async fn blocking<T: Send + 'static>(
    mut ctx: Context,
    f: impl FnOnce(&mut Context) -> T + Send + 'static,
) -> Option<(Context, T)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut ctx);
        (ctx, r)
    })
    .await
    .ok()
}
