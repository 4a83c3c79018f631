//! What the attributes say, read from the tokens: one [`Entrypoint`] per
//! annotated method, each parameter classified once. Every misuse is a
//! `syn::Error` spanned on the offending tokens.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Error, Expr, FnArg, GenericArgument, Ident, Lit, LitBool, LitStr, Pat,
    PathArguments, ReturnType, Signature, Type,
};

/// Most parameters a method can have (rpc-core's `FromArgs` tuples).
const MAX_PARAMS: usize = 12;

/// The attribute's own arguments: `#[service(name = "...", client = X,
/// on_invalid_argument = path)]` or `#[client(service = "...", client = X)]`.
pub struct ServiceArgs {
    pub name: LitStr,
    pub client: Option<Ident>,
    /// `no_client`: a service whose results are not `Deserialize` has no
    /// typed client.
    pub no_client: bool,
    pub on_invalid_argument: Option<syn::Path>,
}

impl ServiceArgs {
    pub fn parse(tokens: proc_macro2::TokenStream, name_key: &str) -> syn::Result<Self> {
        let mut name = None;
        let mut client = None;
        let mut on_invalid_argument = None;
        let mut no_client = false;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident(name_key) {
                name = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("client") {
                client = Some(meta.value()?.parse::<Ident>()?);
            } else if meta.path.is_ident("no_client") && name_key == "name" {
                no_client = true;
            } else if meta.path.is_ident("on_invalid_argument") && name_key == "name" {
                on_invalid_argument = Some(meta.value()?.parse::<syn::Path>()?);
            } else {
                let known = if name_key == "name" {
                    "`name = \"...\"`, `client = Ident`, `no_client`, `on_invalid_argument = path`"
                } else {
                    "`service = \"...\"`, `client = Ident`"
                };
                return Err(meta.error(format!("unknown argument; expected {known}")));
            }
            Ok(())
        });
        syn::parse::Parser::parse2(parser, tokens)?;
        let name = name.ok_or_else(|| {
            Error::new(
                Span::call_site(),
                format!("missing `{name_key} = \"...\"`: the service's name on the wire"),
            )
        })?;
        if name.value().is_empty() {
            return Err(Error::new(name.span(), "the service name cannot be empty"));
        }
        Ok(ServiceArgs {
            name,
            client,
            no_client,
            on_invalid_argument,
        })
    }
}

/// How a method is exposed.
pub enum Kind {
    /// `#[rpc]` or `#[rpc(name = "...")]`.
    Rpc { wire_name: String },
    /// `#[timer(interval = N, eager = bool)]`.
    Timer { interval: Expr, eager: bool },
    /// `#[event_handler(source = "...", event = "...", ...)]`.
    Event(EventArgs),
}

pub struct EventArgs {
    pub source: LitStr,
    pub event: LitStr,
    pub handler_type: Option<LitStr>,
    pub reliable_delivery: Option<LitBool>,
    pub requeue_on_error: Option<LitBool>,
    pub broadcast_identifier: Option<LitStr>,
}

/// How a handler receives the call's context.
#[derive(Clone, Copy)]
pub enum ContextArg {
    Borrowed,
    Owned,
}

/// One parameter of an entrypoint (the context excluded).
pub struct Param {
    pub ident: Ident,
    /// Its name on the wire (a raw identifier without `r#`).
    pub wire_name: String,
    pub ty: Type,
    /// `#[default(expr)]` (the expression) or `#[default]` (`None` inside),
    /// a `None` outside when the parameter has no default.
    pub default: Option<Option<Expr>>,
    /// The `T` of an `Option<T>` parameter.
    pub option_of: Option<Type>,
}

impl Param {
    /// Whether a caller may leave it out.
    pub fn optional(&self) -> bool {
        self.default.is_some() || self.option_of.is_some()
    }

    /// The type a client takes: `Option<T>` for an optional parameter,
    /// never `Option<Option<T>>`.
    pub fn client_type(&self) -> Type {
        let ty = &self.ty;
        if self.default.is_some() && self.option_of.is_none() {
            syn::parse_quote!(::core::option::Option<#ty>)
        } else {
            ty.clone()
        }
    }
}

/// One annotated method.
pub struct Entrypoint {
    pub kind: Kind,
    pub sig: Signature,
    pub docs: Vec<Attribute>,
    /// Where the context goes, by position among all arguments after
    /// `self`: (index, how).
    pub context: Option<(usize, ContextArg)>,
    pub params: Vec<Param>,
    /// `T` of `Result<T, E>` (or the plain return type in a client trait).
    pub ok_type: Type,
    /// `E` of `Result<T, E>`, when there is one.
    pub err_type: Option<Type>,
}

/// Finds this crate's attribute on a method, removes it, and reads it.
pub fn take_kind(attrs: &mut Vec<Attribute>) -> syn::Result<Option<(Kind, Span)>> {
    let mut found = None;
    let mut error: Option<Error> = None;
    attrs.retain(|attr| {
        let which = ["rpc", "timer", "event_handler"]
            .into_iter()
            .find(|name| attr.path().is_ident(name));
        let Some(which) = which else {
            return true;
        };
        if found.is_some() {
            let e = Error::new(
                attr.span(),
                "a method has one entrypoint attribute: #[rpc], #[timer] or #[event_handler]",
            );
            match &mut error {
                Some(all) => all.combine(e),
                None => error = Some(e),
            }
            return false;
        }
        match read_kind(which, attr) {
            Ok(kind) => found = Some((kind, attr.span())),
            Err(e) => match &mut error {
                Some(all) => all.combine(e),
                None => error = Some(e),
            },
        }
        false
    });
    match error {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

fn read_kind(which: &str, attr: &Attribute) -> syn::Result<Kind> {
    match which {
        "rpc" => {
            let mut wire_name = None;
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("name") {
                        let name: LitStr = meta.value()?.parse()?;
                        if name.value().is_empty() {
                            return Err(Error::new(name.span(), "a method name cannot be empty"));
                        }
                        wire_name = Some(name.value());
                        Ok(())
                    } else {
                        Err(meta.error("unknown argument; expected `name = \"...\"`"))
                    }
                })?;
            }
            Ok(Kind::Rpc {
                wire_name: wire_name.unwrap_or_default(),
            })
        }
        "timer" => {
            let mut interval = None;
            let mut eager = false;
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("interval") {
                    let expr: Expr = meta.value()?.parse()?;
                    if let Expr::Lit(lit) = &expr {
                        let zero = match &lit.lit {
                            Lit::Int(i) => i.base10_parse::<u64>().ok() == Some(0),
                            Lit::Float(f) => f.base10_parse::<f64>().ok().is_some_and(|v| v <= 0.0),
                            _ => {
                                return Err(Error::new(
                                    lit.span(),
                                    "the interval is a number of seconds",
                                ))
                            }
                        };
                        if zero {
                            return Err(Error::new(
                                lit.span(),
                                "a timer interval must be more than zero",
                            ));
                        }
                    }
                    interval = Some(expr);
                    Ok(())
                } else if meta.path.is_ident("eager") {
                    eager = meta.value()?.parse::<LitBool>()?.value;
                    Ok(())
                } else {
                    Err(meta
                        .error("unknown argument; expected `interval = seconds` or `eager = bool`"))
                }
            })?;
            let interval = interval.ok_or_else(|| {
                Error::new(
                    attr.span(),
                    "missing `interval = seconds` (as nameko's @timer(interval=...))",
                )
            })?;
            Ok(Kind::Timer { interval, eager })
        }
        _ => {
            let mut source = None;
            let mut event = None;
            let mut handler_type = None;
            let mut reliable_delivery = None;
            let mut requeue_on_error = None;
            let mut broadcast_identifier = None;
            attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                match key.as_str() {
                    "source" => source = Some(meta.value()?.parse::<LitStr>()?),
                    "event" => event = Some(meta.value()?.parse::<LitStr>()?),
                    "handler_type" => {
                        let value: LitStr = meta.value()?.parse()?;
                        if !["service_pool", "singleton", "broadcast"].contains(&value.value().as_str()) {
                            return Err(Error::new(
                                value.span(),
                                "handler_type is \"service_pool\", \"singleton\" or \"broadcast\"",
                            ));
                        }
                        handler_type = Some(value);
                    }
                    "reliable_delivery" => reliable_delivery = Some(meta.value()?.parse::<LitBool>()?),
                    "requeue_on_error" => requeue_on_error = Some(meta.value()?.parse::<LitBool>()?),
                    "broadcast_identifier" => {
                        broadcast_identifier = Some(meta.value()?.parse::<LitStr>()?)
                    }
                    _ => {
                        return Err(meta.error(
                            "unknown argument; expected source, event, handler_type, reliable_delivery, requeue_on_error or broadcast_identifier",
                        ))
                    }
                }
                Ok(())
            })?;
            let source = source.ok_or_else(|| {
                Error::new(
                    attr.span(),
                    "missing `source = \"...\"`: the service the events come from",
                )
            })?;
            let event = event.ok_or_else(|| {
                Error::new(attr.span(), "missing `event = \"...\"`: the event type")
            })?;
            Ok(Kind::Event(EventArgs {
                source,
                event,
                handler_type,
                reliable_delivery,
                requeue_on_error,
                broadcast_identifier,
            }))
        }
    }
}

/// Whether `ty` names rpc-core's `Context` (by its last path segment), and
/// how it is taken.
fn context_arg(ty: &Type) -> Option<ContextArg> {
    let (inner, how) = match ty {
        Type::Reference(r) if r.mutability.is_none() => (&*r.elem, ContextArg::Borrowed),
        other => (other, ContextArg::Owned),
    };
    match inner {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .filter(|s| s.ident == "Context" && s.arguments.is_empty())
            .map(|_| how),
        _ => None,
    }
}

/// The `T` of `Option<T>` (by its last path segment).
fn option_of(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first() {
        Some(GenericArgument::Type(t)) if args.args.len() == 1 => Some(t.clone()),
        _ => None,
    }
}

/// `(T, E)` of a `Result<T, E>` return type.
fn result_types(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(ok), Some(err), None) => Some((ok, err)),
        _ => None,
    }
}

/// Reads one parameter's `#[default(...)]`, removing it.
fn take_default(attrs: &mut Vec<Attribute>, allow_bare: bool) -> syn::Result<Option<Option<Expr>>> {
    let mut found = None;
    let mut error = None;
    attrs.retain(|attr| {
        if !attr.path().is_ident("default") {
            return true;
        }
        let read = match &attr.meta {
            syn::Meta::Path(_) if allow_bare => Ok(None),
            syn::Meta::Path(_) => Err(Error::new(
                attr.span(),
                "#[default] needs the value: #[default(expr)]",
            )),
            syn::Meta::List(list) => list.parse_args::<Expr>().map(Some),
            syn::Meta::NameValue(nv) => Err(Error::new(nv.span(), "write #[default(expr)]")),
        };
        match read {
            Ok(value) if found.is_none() => found = Some(value),
            Ok(_) => error = Some(Error::new(attr.span(), "one #[default(...)] per parameter")),
            Err(e) => error = Some(e),
        }
        false
    });
    match error {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// Which form the entrypoint is read for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A method of a service (impl block or service trait).
    Service,
    /// A method of a `#[client]` trait: a description of a remote method.
    Client,
}

/// Reads an annotated method's signature (and strips the parameter
/// attributes this crate owns from it).
pub fn read_entrypoint(
    kind: Kind,
    sig: &mut Signature,
    attrs: &[Attribute],
    form: Form,
) -> syn::Result<Entrypoint> {
    let what = match (&kind, form) {
        (_, Form::Client) => "a client method",
        (Kind::Rpc { .. }, _) => "an #[rpc] method",
        (Kind::Timer { .. }, _) => "a #[timer] method",
        (Kind::Event(_), _) => "an #[event_handler] method",
    };
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            format!("{what} must be an `async fn`"),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(Error::new(
            sig.generics.span(),
            format!("{what} cannot be generic: each parameter has one type on the wire"),
        ));
    }
    let mut inputs = sig.inputs.iter_mut();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            return Err(Error::new(
                r.span(),
                format!("{what} takes `&self`: calls run at once and share the service"),
            ))
        }
        _ => {
            return Err(Error::new(
                sig.ident.span(),
                format!("{what} takes `&self` first"),
            ))
        }
    }
    let mut context = None;
    let mut params = Vec::new();
    let mut errors: Option<Error> = None;
    let mut add_error = |e: Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for (index, arg) in inputs.enumerate() {
        let FnArg::Typed(pat_type) = arg else {
            continue;
        };
        let default = match take_default(&mut pat_type.attrs, form == Form::Client) {
            Ok(d) => d,
            Err(e) => {
                add_error(e);
                None
            }
        };
        if let Some(other) = pat_type.attrs.first() {
            add_error(Error::new(
                other.span(),
                "the only parameter attribute here is #[default(...)]",
            ));
        }
        let ident = match &*pat_type.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                add_error(Error::new(
                    other.span(),
                    "a parameter is a plain name (`name: Type`), not a pattern: the name is the keyword a caller sends",
                ));
                continue;
            }
        };
        if let Some(how) = context_arg(&pat_type.ty) {
            if form == Form::Client {
                add_error(Error::new(
                    pat_type.span(),
                    "a client method takes no context: the caller it is made with carries it",
                ));
            } else if context.is_some() {
                add_error(Error::new(
                    pat_type.span(),
                    "a second context parameter: a method takes the call's context once",
                ));
            } else if default.is_some() {
                add_error(Error::new(pat_type.span(), "the context has no default"));
            } else {
                context = Some((index, how));
            }
            continue;
        }
        params.push(Param {
            wire_name: ident.unraw().to_string(),
            ident,
            option_of: option_of(&pat_type.ty),
            ty: (*pat_type.ty).clone(),
            default,
        });
    }
    if let Some(e) = errors {
        return Err(e);
    }
    if params.len() > MAX_PARAMS {
        return Err(Error::new(
            sig.inputs.span(),
            format!("at most {MAX_PARAMS} parameters (besides the context)"),
        ));
    }
    let (ok_type, err_type) = match (&sig.output, form) {
        (ReturnType::Type(_, ty), Form::Client) => match result_types(ty) {
            Some((ok, err)) => (ok, Some(err)),
            None => ((**ty).clone(), None),
        },
        (ReturnType::Default, Form::Client) => (syn::parse_quote!(()), None),
        (ReturnType::Type(_, ty), Form::Service) => match result_types(ty) {
            Some((ok, err)) => (ok, Some(err)),
            None => {
                return Err(Error::new(
                    ty.span(),
                    format!("{what} returns `Result<T, E>`{}", result_hint(&kind)),
                ))
            }
        },
        (ReturnType::Default, Form::Service) => {
            return Err(Error::new(
                sig.paren_token.span.join(),
                format!("{what} returns `Result<T, E>`{}", result_hint(&kind)),
            ))
        }
    };
    match (&kind, form) {
        (Kind::Timer { .. }, Form::Service) if !params.is_empty() => {
            return Err(Error::new(
                params[0].ident.span(),
                "a #[timer] method takes only `&self` and, optionally, `&Context`",
            ))
        }
        (Kind::Event(_), Form::Service) if params.len() != 1 => {
            return Err(Error::new(
                sig.inputs.span(),
                "an #[event_handler] method takes the event's data: one parameter besides `&self` and an optional `&Context`",
            ))
        }
        (Kind::Event(_), Form::Service) if params[0].default.is_some() => {
            return Err(Error::new(
                params[0].ident.span(),
                "an event's data has no default",
            ))
        }
        _ => {}
    }
    let docs = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    let kind = match kind {
        Kind::Rpc { wire_name } if wire_name.is_empty() => Kind::Rpc {
            wire_name: sig.ident.unraw().to_string(),
        },
        other => other,
    };
    Ok(Entrypoint {
        kind,
        sig: sig.clone(),
        docs,
        context,
        params,
        ok_type,
        err_type,
    })
}

fn result_hint(kind: &Kind) -> &'static str {
    match kind {
        Kind::Rpc { .. } => {
            " with T: Serialize (the result) and E: Into<RpcError> (what the caller is sent)"
        }
        _ => " with T = () and E: Display (logged)",
    }
}
