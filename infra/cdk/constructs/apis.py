"""The client WebSocket API and the operator HTTP API."""

from __future__ import annotations

import jsii
from aws_cdk import Stack
from aws_cdk import aws_apigateway as apigw_v1
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from fanout.topology import OPERATOR_ROUTES
from infra.cdk.config import FanoutConfig
from infra.cdk.nag import acknowledge

TOKEN_IDENTITY_SOURCE = "route.request.querystring.token"

_WS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "connectionId": "$context.connectionId",
    "eventType": "$context.eventType",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "requestTime": "$context.requestTimeEpoch",
    "ip": "$context.identity.sourceIp",
    "integrationLatency": "$context.integrationLatency",
    "error": "$context.error.message",
    "authorizerError": "$context.authorizer.error",
}
_HTTP_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "requestTime": "$context.requestTimeEpoch",
    "ip": "$context.identity.sourceIp",
    "caller": "$context.identity.userArn",
    "latency": "$context.responseLatency",
    "error": "$context.error.message",
    "integrationError": "$context.integrationErrorMessage",
}


@jsii.implements(apigw.IAccessLogSettings)
class JsonAccessLogs:
    def __init__(self, log_group: logs.ILogGroup, fields: dict[str, str]) -> None:
        self._destination = apigw.LogGroupLogDestination(log_group)
        self._format = apigw_v1.AccessLogFormat.custom(
            "{" + ",".join(f'"{k}":"{v}"' for k, v in fields.items()) + "}"
        )

    @property
    def destination(self) -> apigw.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw_v1.AccessLogFormat:
        return self._format


class WebSocketApi(Construct):
    """$connect (REQUEST authorizer on ?token=), $disconnect, $default (two-way), one stage."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        functions: dict[str, lambda_.IFunction],
        access_logs: logs.ILogGroup,
    ) -> None:
        super().__init__(scope, id)
        authorizer = authorizers.WebSocketLambdaAuthorizer(
            "TokenAuthorizer",
            functions["authorizer"],
            authorizer_name=config.name("token"),
            identity_source=[TOKEN_IDENTITY_SOURCE],
        )
        self.api = apigw.WebSocketApi(
            self,
            "Api",
            api_name=config.name("websocket"),
            description="fanout client WebSocket API",
            route_selection_expression="$request.body.action",
            connect_route_options=apigw.WebSocketRouteOptions(
                integration=integrations.WebSocketLambdaIntegration("ConnectHandler", functions["connect"]),
                authorizer=authorizer,
            ),
            disconnect_route_options=apigw.WebSocketRouteOptions(
                integration=integrations.WebSocketLambdaIntegration(
                    "DisconnectHandler", functions["disconnect"]
                )
            ),
            default_route_options=apigw.WebSocketRouteOptions(
                integration=integrations.WebSocketLambdaIntegration("DefaultHandler", functions["default"]),
                return_response=True,
            ),
        )
        self.stage = apigw.WebSocketStage(
            self,
            "Stage",
            web_socket_api=self.api,
            stage_name=config.stage_name,
            auto_deploy=True,
            throttle=apigw.ThrottleSettings(
                rate_limit=config.websocket_rate_limit, burst_limit=config.websocket_burst_limit
            ),
            access_log_settings=JsonAccessLogs(access_logs, _WS_LOG_FORMAT),
        )
        stack = Stack.of(self)
        # PostToConnection is POST on @connections/{id} of this API's stage.
        self.connections_arn = stack.format_arn(
            service="execute-api",
            resource=self.api.api_id,
            resource_name=f"{config.stage_name}/POST/@connections/*",
        )
        self.callback_url = self.stage.callback_url
        self.url = self.stage.url
        for route in ("$disconnect", "$default"):
            acknowledge(
                self.api.node.find_child(f"{route}-Route"),
                "AwsSolutions-APIG4",
                f"{route}: a WebSocket API authorizes once, on $connect (REQUEST authorizer on the token); "
                "API Gateway runs no authorizer on the other routes of an authorized connection.",
            )


class OperatorApi(Construct):
    """POST /broadcasts and GET /broadcasts/{broadcastId}, IAM (SigV4) authorization, throttled."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: FanoutConfig,
        handler: lambda_.IFunction,
        access_logs: logs.ILogGroup,
    ) -> None:
        super().__init__(scope, id)
        self.api = apigw.HttpApi(
            self,
            "Api",
            api_name=config.name("operator"),
            description="fanout operator API (SigV4-signed requests only)",
            create_default_stage=False,
            default_authorizer=authorizers.HttpIamAuthorizer(),
        )
        integration = integrations.HttpLambdaIntegration(
            "OperatorApi", handler, payload_format_version=apigw.PayloadFormatVersion.VERSION_2_0
        )
        for route in OPERATOR_ROUTES:
            method, path = route.split(" ", 1)
            self.api.add_routes(path=path, methods=[apigw.HttpMethod(method)], integration=integration)
        self.stage = apigw.HttpStage(
            self,
            "Stage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigw.ThrottleSettings(
                rate_limit=config.operator_rate_limit, burst_limit=config.operator_burst_limit
            ),
            access_log_settings=JsonAccessLogs(access_logs, _HTTP_LOG_FORMAT),
        )
        self.url = self.api.api_endpoint

    def grant_invoke(self, grantee: iam.IGrantable) -> iam.Grant:
        """execute-api:Invoke on the operator routes, for an operator role or user."""
        stack = Stack.of(self)
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["execute-api:Invoke"],
            resource_arns=[
                stack.format_arn(service="execute-api", resource=self.api.api_id, resource_name=name)
                for name in ("$default/*/broadcasts*", "$default/GET/channels/*")
            ],
        )
